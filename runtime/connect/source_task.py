"""Runs a Source as a supervised task: pull records, send them, checkpoint their offsets.

One loop, the worker host's main thread: take up to ``batch`` records from the source (or
what it has before it yields ``None``), convert and transform each, send them all, flush
(the broker acknowledged every one), then write a checkpoint to ``_connect-offsets``.  A
record that fails conversion or a transform stops the task (``errors.tolerance = "none"``)
or goes to ``<topic>.dlq`` with the error in its headers (``"all"``).  See ``offsets`` for
why a kill -9 anywhere in this loop neither loses nor repeats a record.
"""

from __future__ import annotations

import time
from typing import Any

from brokerd import protocol as p
from runtime.client import Producer
from runtime.connect.api import Source
from runtime.connect.errors import BadRecord, ConnectError
from runtime.connect.offsets import (
    HEADER,
    OFFSETS_TOPIC,
    Checkpoint,
    Headers,
    checkpoint_value,
    recover,
)
from runtime.connect.records import SourceRecord
from runtime.connect.settings import ConnectorSettings
from runtime.connection import BrokerUnavailable
from runtime.dlq import dlq_topic
from runtime.routing import Link, connect
from runtime.worker import Hosted

IDLE_PAUSE_S = 0.1  # after the source said it has nothing now
BROKER_RETRY_S = 1.0


class SourceTask:
    def __init__(self, host: Hosted, source: Source, settings: ConnectorSettings) -> None:
        self.host = host
        self.source = source
        self.settings = settings
        self.key = f"{settings.name}/{source.task}"
        self.topics = settings.topics
        self.point = Checkpoint()
        self.stored_ahead: set[int] = set()  # sequence numbers stored already (recover)
        self.headers = Headers(self.key, None)

    def run(self) -> int:
        broker = self.host.options.broker
        conn = connect(broker)
        try:
            point = self._recover(conn)
            if point is None:
                return 0
            self.point = point
            self.headers = Headers(self.key, point.partition)
            self.source.open(dict(self.point.offsets))  # a config error leaves nothing open
            try:
                # A producer batch as big as the task's (up to the producer's 1,000 by
                # default): fewer batches for the broker to frame, check and index.
                producer = Producer(broker, acks=self.settings.acks,
                                    batch_size=max(1000, min(self.settings.batch, 10_000)))
                try:
                    for topic in self.topics:  # learns the acks too: "all" on a cluster
                        producer.partitions_for(topic)
                    self.host.log.info("source %s resumes at %s (seq %d, acks %s)", self.key,
                                       self.point.offsets or "the beginning", self.point.seq,
                                       producer.acks)
                    self._loop(conn, producer)
                finally:
                    producer.close(timeout_s=10)
            finally:
                self.source.close()
        finally:
            conn.close()
        return 0

    def _recover(self, conn: Link) -> Checkpoint | None:
        scanned = self.topics + [dlq_topic(t) for t in self.topics]
        while not self.host.stopping:
            try:
                point, self.stored_ahead = recover(conn, self.key, scanned)
                return point
            except BrokerUnavailable as exc:
                self.host.log.warning("%s; waiting for it", exc)
                time.sleep(BROKER_RETRY_S)
        return None

    def _loop(self, conn: Link, producer: Producer) -> None:
        records = self.source.records()
        self.host.state = "running"
        while not self.host.stopping:
            batch = self._take(records)
            if batch:
                self._send(conn, producer, batch)
            else:
                self.host.idle = True
                time.sleep(IDLE_PAUSE_S)

    def _take(self, records: Any) -> list[SourceRecord]:
        batch: list[SourceRecord] = []
        size = self.settings.batch
        deadline = time.monotonic() + self.settings.linger_s
        for record in records:  # the generator stays open: the next _take goes on with it
            if record is None:
                break
            batch.append(record)
            # The clock every record: a slow source that never yields None still flushes
            # after linger_ms.
            if len(batch) >= size or self.host.stopping or time.monotonic() > deadline:
                break
        return batch

    def _send(self, conn: Link, producer: Producer, batch: list[SourceRecord]) -> None:
        self.host.idle = False
        point = self.point
        offsets, stored_ahead, header = point.offsets, self.stored_ahead, self.headers.value
        first, topics, prepare = self.topics[0], self.topics, self.settings.prepare
        # Each topic's records, in order, for one send_records call a topic (not a send
        # a record: a third of the task's CPU went there).
        out: dict[str, list[tuple[Any, Any, dict[str, Any] | None]]] = {}
        for record in batch:
            topic = record.topic or first
            prepared: tuple[Any, Any, str] | BadRecord | None
            try:
                prepared = prepare(record.value, record.key, topic)
                if prepared is not None and prepared[2] not in topics:
                    raise BadRecord(f"topic {prepared[2]!r} is not among the connector's "
                                    "topics: a source writes only to those (its offsets "
                                    "are found there after a crash); add it to topics")
            except BadRecord as exc:
                prepared = exc
            if prepared is None:  # a transform filtered it out: no number, nothing sent
                offsets[record.source_partition] = record.source_offset
                continue
            seq = point.seq = point.seq + 1
            headers = {HEADER: header(seq, record.source_partition, record.source_offset)}
            if record.headers:
                headers = {**record.headers, **headers}
            if seq in stored_ahead:  # sent before a kill, and stored
                stored_ahead.discard(seq)
            elif isinstance(prepared, BadRecord):
                self._reject(producer, record, topic, headers, prepared)
            else:
                value, key, topic = prepared
                records = out.get(topic)
                if records is None:
                    records = out[topic] = []
                records.append((key, value, headers))
            offsets[record.source_partition] = record.source_offset
        for topic, records in out.items():
            producer.send_records(topic, records)  # a one-partition topic: no key hashing
        point.partition = self.headers.partition
        producer.flush()
        if producer.errors:
            raise ConnectError(f"source {self.key}: the broker refused records: "
                               f"{producer.errors[0]}")
        self._checkpoint(conn, producer)
        self.host.processed += len(batch)

    def _reject(self, producer: Producer, record: SourceRecord, topic: str,
                headers: dict[str, Any], error: BadRecord) -> None:
        if self.settings.tolerance == "none":
            raise ConnectError(f"source {self.key}: record at {record.source_partition} "
                               f"{record.source_offset!r}: {error} (errors.tolerance = \"none\")")
        headers["rail.error"] = f"{type(error).__name__}: {error}"
        headers["rail.connector"] = self.settings.name
        producer.send(dlq_topic(topic), record.value, key=record.key, headers=headers)
        self.host.failed += 1

    def _checkpoint(self, conn: Link, producer: Producer) -> None:
        scanned = set(self.topics) | {dlq_topic(t) for t in self.topics}
        for info in conn.call(p.Metadata(topics=None)).topics:
            if info.name not in scanned:
                continue
            self.point.positions[info.name] = {part.partition: part.end_offset
                                               for part in info.partitions}
        producer.send(OFFSETS_TOPIC, checkpoint_value(self.point), key=self.key)
