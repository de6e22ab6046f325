"""Cluster test helpers: brokers joined to a ZooKeeper, a leader-following producer, a
steady Python Producer stream, and the history checker every fault scenario runs."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from brokerd.config import TopicDefaults
from brokerd.log.partition import PartitionLog
from runtime.client import BrokerError, Producer
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import BrokerProcess, start_broker, wait_for
from tests.integration.wire import RawClient


def start_member(folder: Path, zk: ZooKeeper, broker_id: int, *extra: str,
                 api_port: int | None = None) -> BrokerProcess:
    return start_broker(folder / f"b{broker_id}", "--broker-id", str(broker_id),
                        "--zookeeper", zk.hosts, *extra, api_port=api_port, timeout=30.0)


def metadata(api: str, topic: str) -> dict[str, Any] | None:
    try:
        with RawClient(api) as raw:
            reply = raw.call("metadata", timeout_s=2.0, topics=[topic])
    except AssertionError:
        return None
    return reply if reply.get("op") == "metadata" else None


def wait_in_sync(apis: list[str], topic: str, partitions: int, replicas: int,
                 timeout: float = 30.0) -> dict[int, int]:
    """Wait until every partition has a leader and ``replicas`` in-sync replicas, as seen
    by its leader; return {partition: leader id}."""
    def check() -> dict[int, int] | None:
        leaders: dict[int, int] = {}
        for api in apis:
            meta = metadata(api, topic)
            if meta is None:
                continue
            by_id = {b["id"]: b["api"] for b in meta["brokers"]}
            for part in meta["topics"][0]["partitions"]:
                leader = part["leader"]
                if leader >= 0 and by_id.get(leader) == api and len(part["isr"]) == replicas:
                    leaders[part["partition"]] = leader
        return leaders if len(leaders) == partitions else None
    return wait_for(check, timeout=timeout, interval=0.1, what=f"{topic} in sync")


def create_in_sync(apis: list[str], topic: str, partitions: int = 1, replicas: int = 3,
                   **fields: Any) -> dict[int, int]:
    """Create ``topic`` through the first broker (``fields``: more of ``create_topic``'s,
    e.g. ``config``) and wait until it is in sync (``wait_in_sync``): {partition: leader}."""
    with RawClient(apis[0]) as raw:
        raw.ok("create_topic", topic=topic, partitions=partitions, **fields)
    return wait_in_sync(apis, topic, partitions, replicas)


class Stream:
    """A steady keyed ``acks="all"`` stream to topic ``t`` from the Python Producer given
    the bootstrap list, in a thread; every acknowledgement kept with the time it came."""

    def __init__(self, apis: list[str], request_timeout_s: float = 3) -> None:
        self.producer = Producer(",".join(apis), acks="all", request_timeout_s=request_timeout_s)
        self.acked: list[tuple[int, int, Any, float]] = []
        self.failed: list[BrokerError] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            def done(part: int, offset: int, error: BrokerError | None, v: str = f"p{i}") -> None:
                if error is None:
                    self.acked.append((part, offset, v, time.time()))
                else:
                    self.failed.append(error)
            self.producer.send("t", f"p{i}", key=f"k{i % 101}", callback=done)
            i += 1
            if i % 10 == 0:
                time.sleep(0.01)

    def acks_since(self, partition: int, since: float) -> int:
        return sum(1 for part, _, _, at in self.acked if part == partition and at > since)

    def records(self) -> list[tuple[int, int, Any]]:
        """``(partition, offset, value)`` of every acknowledged record."""
        return [(part, offset, v) for part, offset, v, _ in self.acked]

    def ends(self) -> dict[int, int]:
        """Each partition's offset after its last acknowledged record."""
        ends: dict[int, int] = defaultdict(int)
        for part, offset, _, _ in self.acked:
            ends[part] = max(ends[part], offset + 1)
        return dict(ends)

    def finish(self) -> None:
        """Stop sending, wait for every ack; no send may have failed."""
        self.stop.set()
        self.thread.join(10)
        self.producer.flush(timeout_s=60)
        assert not self.failed and not self.producer.errors, \
            (self.failed + self.producer.errors)[:3]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        with contextlib.suppress(BrokerError):  # a failed run must still stop the brokers
            self.producer.close(timeout_s=1)


@dataclass
class LeaderProducer:
    """An idempotent producer that follows leaders: on any failure it refreshes metadata
    and resends the same batch (same producer id and sequence) until it is acknowledged."""

    apis: list[str]
    topic: str
    producer_id: int
    acks: Any = "all"
    sequences: dict[int, int] = field(default_factory=dict)
    acked: list[tuple[int, int, Any]] = field(default_factory=list)
    """(partition, offset, value) of every acknowledged record."""
    errors: list[str] = field(default_factory=list)
    _leaders: dict[int, str] = field(default_factory=dict)
    _silent_until: dict[str, float] = field(default_factory=dict)
    _clients: dict[str, RawClient] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def send(self, partition: int, values: list[Any], deadline_s: float = 60.0) -> None:
        sequence = self.sequences.get(partition, 0)
        records = msgspec.Raw(msgspec.msgpack.encode([[v] for v in values]))
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            api = self._leader(partition)
            if api is None:
                time.sleep(0.1)
                continue
            client = self._client(api)
            try:
                reply = client.call("produce", timeout_s=5.0, topic=self.topic,
                                    partition=partition, acks=self.acks,
                                    producer_id=self.producer_id, sequence=sequence,
                                    records=records)
            except AssertionError as exc:  # no reply in time: the broker may be dead
                self.errors.append(str(exc)[:80])
                self._drop(api)
                self._silent_until[api] = time.monotonic() + 5.0
                self._leaders.pop(partition, None)
                continue
            if reply["op"] == "produce":
                [(part, base, count)] = reply["offsets"]
                self.acked.extend((part, base + i, v) for i, v in enumerate(values))
                self.sequences[partition] = sequence + len(values)
                return
            self.errors.append(reply["code"])
            self._leaders.pop(partition, None)
            time.sleep(0.05)
        raise TimeoutError(f"no leader of {self.topic}[{partition}] took the batch in "
                           f"{deadline_s} s: {self.errors[-5:]}")

    def _leader(self, partition: int) -> str | None:
        """The partition's leader, as its leader itself says (cached until a failure)."""
        if partition in self._leaders:
            return self._leaders[partition]
        now = time.monotonic()
        for api in self.apis:
            if self._silent_until.get(api, 0) > now:
                continue
            meta = metadata(api, self.topic)
            if meta is None:
                self._silent_until[api] = now + 5.0
                continue
            by_id = {b["id"]: b["api"] for b in meta["brokers"]}
            leader = meta["topics"][0]["partitions"][partition]["leader"]
            if by_id.get(leader) == api:
                self._leaders[partition] = api
                return api
        return None

    def _client(self, api: str) -> RawClient:
        if api not in self._clients:
            self._clients[api] = RawClient(api)
        return self._clients[api]

    def _drop(self, api: str) -> None:
        client = self._clients.pop(api, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def read_log(data_dir: Path, topic: str, partition: int) -> list[tuple[int, bytes]]:
    """(offset, record bytes) of every record a stopped broker holds for the partition
    (none if it holds no copy: opening one would create it).  Never of a running broker:
    opening its log recovers the tail it is writing."""
    directory = data_dir / "topics" / topic / str(partition)
    if not directory.exists():
        return []
    plog = PartitionLog(directory, TopicDefaults())
    try:
        out = []
        offset = plog.start_offset
        while offset < plog.end_offset:
            batches = plog.read_all(offset, 1 << 20)
            for b in batches:
                records = msgspec.msgpack.decode(bytes(b.payload), type=list[msgspec.Raw])
                out.extend((b.header.base_offset + i, bytes(r)) for i, r in enumerate(records))
                offset = b.header.next_offset
        return out
    finally:
        plog.close()


def check_history(acked: list[tuple[int, int, Any]],
                  logs: dict[str, dict[int, list[tuple[int, bytes]]]]) -> None:
    """Every acknowledged record is in every replica once, at the offset it was acked at;
    offsets are dense; all replicas of a partition are identical."""
    first = next(iter(logs.values()))
    for partition in first:
        copies = {name: by_part[partition] for name, by_part in logs.items()}
        reference = next(iter(copies.values()))
        for name, copy in copies.items():
            assert copy == reference, f"replica {name} of partition {partition} diverges"
        offsets = [o for o, _ in reference]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))) if offsets else True, \
            f"offsets of partition {partition} are not dense"
        values = [msgspec.msgpack.decode(r)[0] for _, r in reference]
        assert len(values) == len(set(values)), f"partition {partition} holds a duplicate"
        stored = dict(zip(offsets, values))
        for part, offset, value in acked:
            if part == partition:
                assert stored.get(offset) == value, (
                    f"acknowledged {value!r} at {partition}@{offset} is "
                    f"{'missing' if offset not in stored else repr(stored[offset])}")


def check_replicas(brokers: list[BrokerProcess], topic: str, partitions: int,
                   acked: list[tuple[int, int, Any]]) -> dict[str, dict[int, list[tuple[int, bytes]]]]:
    """Read every stopped broker's copy of ``topic`` from its files, run the history check
    over them, and return the copies (by broker index, then partition)."""
    logs = {str(i): {p: read_log(b.data_dir, topic, p) for p in range(partitions)}
            for i, b in enumerate(brokers)}
    check_history(acked, logs)
    return logs
