"""Runs a Sink as a supervised task: poll the group, convert, ``put`` batches, commit.

Events gather until ``batch`` of them or ``linger_ms`` passed, then go to the sink in
``put`` calls of at most ``batch`` events, each partition's in offset order.  For a sink
that allows it (``Sink.pipelined``: PostgreSQL's) ``put`` runs on a thread of its own, one
batch at a time: while the destination applies a batch (psycopg waits for the server
without the GIL), the task polls and converts the next one.  A batch's offsets are
committed once its ``put`` returned, in batch order, and the batch in flight is finished
before the stored offsets are read again after a rebalance.  A sink that
stores its offsets with its data (``stored_offsets``) is the authority on where to resume:
events below its stored offset of their partition are dropped before ``put`` (the group's
commit, sent after ``put`` returned, may lag behind a crash), and the stored offsets are
read again after every rebalance.  An event that fails conversion, a transform or the
sink's ``check``, or that the sink refused (``take_rejected``), stops the task
(``errors.tolerance = "none"``) or goes to ``<topic>.dlq`` with the error in its headers
(``"all"``), before the batch's offsets are committed.

A sink with ``put_batches`` (``Sink.takes_batches``) gets the records as the consumer took
them off the wire (``poll_batches``: no ``Event`` a record, ordered and cut per batch)
whenever a chunk holds only keyed records with a map value or a tombstone and nothing needs
converting; any other chunk goes the event path above.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from runtime.client import Consumer, Event, Producer
from runtime.connect.api import Sink
from runtime.connect.errors import BadRecord, ConnectError
from runtime.connect.settings import ConnectorSettings
from runtime.connection import BrokerUnavailable
from runtime.consumer import Batch, events_of_batches
from runtime.dlq import send_to_dlq
from runtime.worker import Hosted

POLL_S = 0.2  # a stop is noticed within this
BROKER_RETRY_S = 1.0


class SinkTask:
    def __init__(self, host: Hosted, sink: Sink, settings: ConnectorSettings) -> None:
        self.host = host
        self.sink = sink
        self.settings = settings
        self.floors: dict[tuple[str, int], int] = {}
        self.generation = -2
        self.producer: Producer | None = None  # for dead letters, made on first need
        self.putter = ThreadPoolExecutor(1, thread_name_prefix="rail-sink-put") \
            if sink.pipelined else None
        # The batch whose put is running: its future, next offsets and size.
        self.flying: tuple[Future[None], dict[tuple[str, int], int], int] | None = None
        # Records go to put_batches as they came off the wire where nothing needs an
        # event: no transforms, a converter that leaves a decoded map as it is.
        self.wire = sink.takes_batches and not settings.transforms \
            and settings.converter in ("json", "msgpack")

    def run(self) -> int:
        consumer = self._join()
        if consumer is None:
            return 0
        self.host.state = "running"
        try:
            while not self.host.stopping:
                if self.wire:
                    batches = self._gather_batches(consumer)
                    for chunk in chunks(batches, self.settings.batch):
                        self._deliver_batches(consumer, chunk)
                    if not batches:
                        self._settle(consumer)  # nothing new: the last batch's offsets now
                    continue
                events = self._gather(consumer)
                size = self.settings.batch
                for start in range(0, len(events), size):
                    self._deliver(consumer, events[start:start + size])
                if not events:
                    self._settle(consumer)
            self._settle(consumer)
        finally:
            self.host.state = "stopping"
            if self.putter is not None:
                self.putter.shutdown(wait=True)  # a put still running ends before the close
            self.sink.close()
            if self.producer is not None:
                self.producer.close(timeout_s=10)
            consumer.close()
        return 0

    def _join(self) -> Consumer | None:
        opts = self.host.options
        while not self.host.stopping:
            try:
                return Consumer(opts.broker, group=self.settings.group, topics=opts.topics,
                                member_id=opts.member_id, client_id=opts.name)
            except BrokerUnavailable as exc:
                self.host.log.warning("%s; waiting for it", exc)
                time.sleep(BROKER_RETRY_S)
        return None

    def _gather(self, consumer: Consumer) -> list[Event]:
        self.host.idle = True
        try:
            events = consumer.poll(POLL_S)
            deadline = time.monotonic() + self.settings.linger_s
            while (events and len(events) < self.settings.batch and not self.host.stopping
                   and time.monotonic() < deadline):
                more = consumer.poll(max(0.0, deadline - time.monotonic()))
                if not more:
                    break
                events.extend(more)
        except BrokerUnavailable as exc:
            self.host.log.warning("%s; waiting for it", exc)
            time.sleep(BROKER_RETRY_S)
            return []
        self.host.idle = False
        return events

    def _gather_batches(self, consumer: Consumer) -> list[Batch]:
        """``_gather`` for the wire path."""
        self.host.idle = True
        try:
            batches = consumer.poll_batches(POLL_S)
            count = sum(len(b.records) for b in batches)
            deadline = time.monotonic() + self.settings.linger_s
            while (batches and count < self.settings.batch and not self.host.stopping
                   and time.monotonic() < deadline):
                more = consumer.poll_batches(max(0.0, deadline - time.monotonic()))
                if not more:
                    break
                batches.extend(more)
                count += sum(len(b.records) for b in more)
        except BrokerUnavailable as exc:
            self.host.log.warning("%s; waiting for it", exc)
            time.sleep(BROKER_RETRY_S)
            return []
        self.host.idle = False
        return batches

    def _reread_floors(self, consumer: Consumer) -> None:
        if consumer.generation != self.generation:  # a rebalance: read the floors again
            self._settle(consumer)
            self.generation = consumer.generation
            self.floors = self.sink.stored_offsets(list(self.host.options.topics)) or {}

    def _deliver_batches(self, consumer: Consumer, batches: list[Batch]) -> None:
        """``_deliver`` without an event a record, where every record is a plain row
        (``Sink.put_batches``); anything else (a record to convert or reject, a partition
        delivered again after a rejoin) goes the events' way."""
        self._reread_floors(consumer)
        ordered = batches_in_order(batches, self.floors)
        if ordered is None or not plain(ordered[0]):
            self._deliver(consumer, events_of_batches(batches))
            return
        fresh, next_offsets = ordered
        if fresh:
            self._launch(consumer, self.sink.put_batches, fresh, next_offsets,
                         (fresh[0].topic, fresh[0].partition, fresh[0].base_offset),
                         sum(len(b.records) for b in fresh))

    def _deliver(self, consumer: Consumer, events: list[Event]) -> None:
        self._reread_floors(consumer)
        fresh, next_offsets = in_order(events, self.floors)
        if not fresh:
            return
        ready = self._convert(fresh)
        self._launch(consumer, self.sink.put, ready, next_offsets,
                     (fresh[0].topic, fresh[0].partition, fresh[0].offset), len(ready))

    def _launch(self, consumer: Consumer, put: Callable[[Any, dict[tuple[str, int], int]], None],
                ready: Any, next_offsets: dict[tuple[str, int], int],
                first: tuple[str, int, int], count: int) -> None:
        """Settle the batch in flight, then ``put`` this one (on the putter thread, if the
        sink is pipelined)."""
        self._settle(consumer)
        self.floors.update(next_offsets)  # the next batch starts after this one
        self.host.current = (*first, time.monotonic())
        future: Future[None]
        if self.putter is not None:
            future = self.putter.submit(put, ready, next_offsets)
        else:
            put(ready, next_offsets)
            future = Future()
            future.set_result(None)
        self.flying = (future, next_offsets, count)
        if self.putter is None:
            self._settle(consumer)

    def _settle(self, consumer: Consumer) -> None:
        """Wait for the batch in flight (its put's error is raised here), handle what the
        sink refused, then commit its offsets."""
        if self.flying is None:
            return
        future, next_offsets, count = self.flying
        self.flying = None
        future.result()
        for event, error in self.sink.take_rejected():
            self._reject(event, error)
        self.host.current = None
        if self.producer is not None:
            self.producer.flush()  # dead letters acked before their offsets are committed
        consumer.commit(next_offsets, sync=False)
        self.host.processed += count

    def _convert(self, events: list[Event]) -> list[Event]:
        # Without transforms, the json and msgpack converters return a value that is
        # neither bytes nor str as it is: such an event goes on unchanged (no copy).
        plain = not self.settings.transforms and self.settings.converter in ("json", "msgpack")
        check = self.sink.check
        out = []
        for e in events:
            try:
                if plain and not isinstance(e.value, (bytes, str)):
                    ready = e
                else:
                    got = self.settings.sink_value(e.value, e.key, e.topic)
                    if got is None:  # a transform filtered it out
                        continue
                    value, key, topic = got
                    ready = Event(topic, e.partition, e.offset, value, key, e.headers,
                                  e.timestamp)
                check(ready)
            except BadRecord as exc:
                self._reject(e, exc)
                continue
            out.append(ready)
        return out

    def _reject(self, event: Event, error: BadRecord) -> None:
        if self.settings.tolerance == "none":
            raise ConnectError(f"sink {self.settings.name}: event {event.topic}"
                               f"[{event.partition}]@{event.offset}: {error} "
                               "(errors.tolerance = \"none\")")
        if self.producer is None:
            self.producer = Producer(self.host.options.broker, acks=self.settings.acks)
        send_to_dlq(self.producer, event, error, 1)
        self.host.failed += 1


def chunks(batches: list[Batch], size: int) -> list[list[Batch]]:
    """``batches`` in groups of at most ``size`` records, a batch cut where a group ends."""
    out: list[list[Batch]] = []
    group: list[Batch] = []
    count = 0
    for b in batches:
        records, start = b.records, 0
        while start < len(records):
            take = min(size - count, len(records) - start)
            group.append(b if take == len(records) else
                         Batch(b.topic, b.partition, b.base_offset + start, b.timestamp,
                               records[start:start + take]))
            count += take
            start += take
            if count >= size:
                out.append(group)
                group, count = [], 0
    if group:
        out.append(group)
    return out


def batches_in_order(batches: list[Batch], floors: dict[tuple[str, int], int]
                     ) -> tuple[list[Batch], dict[tuple[str, int], int]] | None:
    """``in_order`` for batches: each cut at its partition's floor, and the next offset of
    each partition after them; None when a partition's batches overlap (a rejoin delivered
    it again from its committed offset): ``in_order`` sorts those out event by event."""
    next_offsets: dict[tuple[str, int], int] = {}
    out = []
    for b in batches:
        tp = (b.topic, b.partition)
        floor = next_offsets.get(tp)
        if floor is None:
            floor = floors.get(tp, 0)
        elif b.base_offset < floor:
            return None
        end = b.base_offset + len(b.records)
        if end <= floor:
            continue
        if b.base_offset < floor:
            b = Batch(b.topic, b.partition, floor, b.timestamp, b.records[floor - b.base_offset:])
        out.append(b)
        next_offsets[tp] = end
    return out, next_offsets


def plain(batches: list[Batch]) -> bool:
    """Every record has a key and a map value or none (a tombstone): a row as it is."""
    for b in batches:
        for r in b.records:
            if r.key is None or not (r.value.__class__ is dict or r.value is None):
                return False
    return True


def in_order(events: list[Event], floors: dict[tuple[str, int], int]
             ) -> tuple[list[Event], dict[tuple[str, int], int]]:
    """``events`` at or above their partition's floor, each offset once, in offset order
    per partition; and the next offset of each partition after them.  A rejoin in the
    middle of gathering a batch delivers a partition again from its committed offset, after
    newer events of it: applied in arrival order, an old value would overwrite a newer one.

    A poll delivers runs of one partition's events: the partition's floor and last offset
    are looked up once a run, not once an event."""
    last: dict[tuple[str, int], int] = {}
    out = []
    ordered = True
    topic, part, tp, floor, prev = None, -1, None, 0, -1
    for e in events:
        if e.partition != part or e.topic != topic:
            if tp is not None:
                last[tp] = prev
            topic, part = e.topic, e.partition
            tp = (topic, part)
            floor, prev = floors.get(tp, 0), last.get(tp, -1)
        offset = e.offset
        if offset < floor:
            continue
        if offset <= prev:
            ordered = False
        prev = offset
        out.append(e)
    if tp is not None:
        last[tp] = prev
    if ordered:
        return out, {tp: offset + 1 for tp, offset in last.items() if offset >= 0}
    unique = {(e.topic, e.partition, e.offset): e for e in reversed(out)}
    out = [unique[k] for k in sorted(unique)]
    return out, {(e.topic, e.partition): e.offset + 1 for e in out}
