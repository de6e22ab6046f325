"""The PULL ingest socket: raw ``[topic, value]`` or ``[topic, key, value]`` frames.

No msgpack needed by the sender: the broker stores value and key as msgpack bin.  Frames
that arrive together are appended together, one batch per partition.  A bad message is
counted (``stats.counts.ingest_invalid``) and logged at most once a second; it never stops
the loop.  Runs on the loop thread.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec
import zmq

from brokerd.errors import RailError
from brokerd.log.batch import HEADER_SIZE
from brokerd.log.partition import now_ms
from brokerd.protocol import partition_for_key, valid_topic_name

if TYPE_CHECKING:
    from brokerd.server import Broker

log = logging.getLogger("brokerd.ingest")
DRAIN = 10_000
_encode = msgspec.msgpack.Encoder().encode


class Ingest:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._last_complaint = 0.0

    def drain(self, sock: zmq.Socket) -> bool:
        """Append what waits on ``sock``; True if it stopped at its limit with more waiting."""
        pending: dict[str, list[list[bytes]]] = {}
        more = True
        security = self.broker.security
        for _ in range(DRAIN):
            try:
                if security is None:
                    frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                else:  # as frames, which carry the sender's principal (ZAP's User-Id)
                    parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    frames = [part.bytes for part in parts]
            except zmq.Again:
                more = False
                break
            problem = self._problem(frames)
            if problem:
                self._complain(problem)
                continue
            topic = frames[0].decode()
            if security is not None and not security.may_ingest(parts[0].get("User-Id"), topic):
                self.broker.stats.count("ingest_denied")
                continue
            pending.setdefault(topic, []).append(frames[1:])
        for topic, items in pending.items():
            self._append(topic, items)
        return more

    @staticmethod
    def _problem(frames: list[bytes]) -> str | None:
        if len(frames) not in (2, 3):
            return f"expected [topic, value] or [topic, key, value], got {len(frames)} frames"
        try:
            name = frames[0].decode()
        except UnicodeDecodeError:
            return "topic frame is not UTF-8"
        if not valid_topic_name(name):
            return f"invalid topic name {name[:60]!r}"
        return None

    def _complain(self, problem: str) -> None:
        self.broker.stats.count("ingest_invalid")
        now = time.monotonic()
        if now - self._last_complaint >= 1.0:
            self._last_complaint = now
            log.warning("ingest: dropped a message: %s", problem)

    def _append(self, name: str, items: list[list[bytes]]) -> None:
        broker = self.broker
        try:
            if broker.cluster is not None:  # a cluster creates topics only in ZooKeeper
                broker.cluster.check_client_write(name)
                topic, created = broker.topics.get(name), False
            else:
                topic, created = broker.topics.get_or_create(name)
        except RailError as exc:
            for _ in items:
                self._complain(exc.message)
            return
        if created:
            broker.coordinator.topics_changed({name})
        count = len(topic.partitions)
        sticky = topic.next_spread % count
        topic.next_spread += 1
        parts: dict[int, list[tuple[bytes, ...]]] = {}
        for frames in items:
            if len(frames) == 1:
                parts.setdefault(sticky, []).append((frames[0],))
            else:
                key, value = frames
                parts.setdefault(partition_for_key(key, count), []).append((value, key))
        now = now_ms()
        for index, records in parts.items():
            payload = _encode(records)
            try:
                if broker.cluster is not None:
                    broker.cluster.leading(name, index)
                topic.partitions[index].append(payload, len(records), now, now, append_timestamp=now)
            except RailError as exc:
                broker.stats.count("ingest_failed", len(records))
                log.error("ingest into %s[%d] failed: %s", name, index, exc.message)
                continue
            counters = topic.counters[index]
            counters.records_in += len(records)
            counters.bytes_in += HEADER_SIZE + len(payload)
            broker.stats.count("ingest_records", len(records))
            broker.appended(topic, index)
