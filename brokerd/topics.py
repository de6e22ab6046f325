"""Topics on disk: ``<data>/topics/<name>/topic.json`` plus one folder per partition.

A topic is built under a hidden ``.creating-<random>`` name and renamed into place once
complete; it is deleted by a rename to ``.deleting-<random>`` and then removed, so a crash
never leaves half a topic visible.  The hidden names do not contain the topic's name: a
valid name of 249 characters plus a prefix would pass the file system's 255-byte limit.
Names are checked before they touch a path; a file system error on one topic is a
``StorageError`` for that request, never a crash.  Growing a topic writes the new
partitions' folders first and ``topic.json`` last, so a crash in between leaves the old
count (the stray folders are reused by the next attempt).  Not thread-safe: owned by the
broker loop.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from brokerd.config import TopicDefaults, topic_config
from brokerd.errors import (
    BadRequest,
    InvalidTopic,
    StorageError,
    TopicExists,
    UnknownPartition,
    UnknownTopic,
)
from brokerd.log.files import fsync_dir, replace_atomically, sync_filesystem
from brokerd.log.partition import PartitionLog
from brokerd.protocol import valid_topic_name

log = logging.getLogger("brokerd.topics")
CONFIG_FILE = "topic.json"


@dataclass
class Counters:
    records_in: int = 0
    bytes_in: int = 0
    records_out: int = 0
    bytes_out: int = 0


@dataclass
class Topic:
    name: str
    config: TopicDefaults
    directory: Path
    partitions: list[PartitionLog]
    counters: list[Counters] = field(default_factory=list)
    next_spread: int = 0

    def partition(self, index: int) -> PartitionLog:
        if not 0 <= index < len(self.partitions):
            raise UnknownPartition(
                f"topic {self.name!r} has partitions 0..{len(self.partitions) - 1}, not {index}")
        return self.partitions[index]

    def close(self) -> None:
        for p in self.partitions:
            p.close()


def check_name(name: str) -> None:
    if not valid_topic_name(name):
        raise InvalidTopic(
            f"invalid topic name {name[:60]!r}: use 1-249 of A-Z a-z 0-9 . _ -, not '.' or '..'")


class TopicRegistry:
    def __init__(self, data_dir: Path, defaults: TopicDefaults, auto_create: bool) -> None:
        self.root = Path(data_dir) / "topics"
        self.defaults = defaults
        self.auto_create = auto_create
        self.topics: dict[str, Topic] = {}
        self._strays: list[Path] = []  # hidden folders a failed create or delete left
        self.root.mkdir(parents=True, exist_ok=True)

    def load(self) -> None:
        """Open every topic on disk, running recovery on each partition, then make what a
        killed broker left in the page cache durable: one syncfs for the whole data dir
        rather than an fsync per partition (1.9 s of a 4.8 s start with 10,000)."""
        for path in sorted(self.root.iterdir()):
            if path.name.startswith((".creating-", ".deleting-")):
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir() and valid_topic_name(path.name):
                self.topics[path.name] = self._open(path, sync_on_open=False)
        sync_filesystem(self.root)

    def _open(self, path: Path, sync_on_open: bool = True) -> Topic:
        config = msgspec.json.decode((path / CONFIG_FILE).read_bytes(), type=TopicDefaults)
        parts = [PartitionLog(path / str(i), config, sync_on_open)
                 for i in range(config.partitions)]
        for i, p in enumerate(parts):
            if not p.recovery.clean:
                log.warning("topic %s partition %d recovery: %s", path.name, i, p.recovery)
        return Topic(path.name, config, path, parts, [Counters() for _ in parts])

    def get(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            check_name(name)
            raise UnknownTopic(f"unknown topic {name!r}: create it first (rail topics create)")
        return topic

    def get_or_create(self, name: str) -> tuple[Topic, bool]:
        topic = self.topics.get(name)
        if topic is not None:
            return topic, False
        if not self.auto_create:
            return self.get(name), False
        return self.create(name, None, {}), True

    def create(self, name: str, partitions: int | None, overrides: dict[str, Any]) -> Topic:
        check_name(name)
        if name in self.topics:
            raise TopicExists(f"topic {name!r} already exists")
        if partitions is not None:
            overrides = {**overrides, "partitions": partitions}
        try:
            config = topic_config(self.defaults, overrides)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        self._remove_strays()
        building = self.root / f".creating-{uuid.uuid4().hex}"
        try:
            building.mkdir()
            for i in range(config.partitions):
                PartitionLog(building / str(i), config).close()
            replace_atomically(building / CONFIG_FILE, msgspec.json.encode(config))
            final = self.root / name
            building.rename(final)
            fsync_dir(self.root)
            topic = self._open(final)
        except OSError as exc:
            self._strays.append(building)
            self._remove_strays()
            raise StorageError.of(f"cannot create topic {name!r}", exc) from exc
        self.topics[name] = topic
        log.info("created topic %s with %d partition(s)", name, config.partitions)
        return topic

    def grow(self, name: str, partitions: int) -> Topic:
        """Give ``name`` ``partitions`` partitions in all (more than it has)."""
        topic = self.get(name)
        have = len(topic.partitions)
        if partitions <= have:
            raise BadRequest(f"topic {name!r} has {have} partition(s): give a larger count "
                             f"(partitions only grow), not {partitions}")
        config = msgspec.structs.replace(topic.config, partitions=partitions)
        try:
            added = [PartitionLog(topic.directory / str(i), config)
                     for i in range(have, partitions)]
            replace_atomically(topic.directory / CONFIG_FILE, msgspec.json.encode(config))
        except OSError as exc:
            raise StorageError.of(f"cannot add partitions to {name!r}", exc) from exc
        for plog in topic.partitions:
            plog.config = config
        topic.config = config
        topic.partitions.extend(added)
        topic.counters.extend(Counters() for _ in added)
        log.info("topic %s grew from %d to %d partitions", name, have, partitions)
        return topic

    def delete(self, name: str) -> None:
        topic = self.get(name)
        topic.close()  # first: its descriptors may be what the rename and fsync need
        doomed = self.root / f".deleting-{uuid.uuid4().hex}"
        try:
            topic.directory.rename(doomed)
            fsync_dir(self.root)
        except OSError as exc:
            if topic.directory.exists():
                self.topics[name] = self._open(topic.directory)
            raise StorageError.of(f"cannot delete topic {name!r}", exc) from exc
        del self.topics[name]
        self._strays.append(doomed)
        self._remove_strays()
        log.info("deleted topic %s", name)

    def _remove_strays(self) -> None:
        """Remove what a create or delete left behind; what cannot go yet (no descriptors
        left, say) is tried again at the next create or delete, and at the next start."""
        for path in self._strays:
            shutil.rmtree(path, ignore_errors=True)
        self._strays = [path for path in self._strays if path.exists()]

    def close(self) -> None:
        for topic in self.topics.values():
            topic.close()
