"""The delay mover: forwards events parked in ``rail.delayed`` once they are due (see
``runtime.worker.delays``).  ``rail up`` runs it as the worker ``rail.delays`` (one replica)
when ``[supervisor] delays = true``; it is a script with its own loop (``run_hosted``).

It reads ``rail.delayed`` as a consumer group member, keeps what is not due yet in a heap
ordered by due time, sleeps until the first one falls due (or an event comes), forwards it
and commits, per partition, the lowest offset not forwarded yet.  Once MAX_HELD events are
held it stops reading, so memory stays bounded (MAX_HELD events plus what one poll returned,
at most the consumer's max_bytes, 1 MiB), and events further along wait in the log (later
than their time if one of them is due before those held; never early).  Reading stops rather
than seeking back past what it cannot hold: a reply already on its way could then bring
later events first, and the watermark would pass the ones skipped.

A cancel marker (``cancel_delayed``) lies behind its event in the same partition: read, it
takes the event out of the heap if it is held there (not forwarded yet), and both offsets
count as done.  A due event is forwarded only once its partition was read up to the end the
broker last reported for it, so that a mover reading again after a crash (from the lowest
offset not done) meets the marker of an event it is about to forward: a cancel that took
effect stays in effect.  Only a full heap (MAX_HELD) forwards without that: reading has
stopped.  A partition kept through a rebalance forwards nothing until the group's committed
offset shows no other member read it past us meanwhile (``check_kept``).
"""

from __future__ import annotations

import heapq
import time
from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.client import Consumer, Event
from runtime.connection import BrokerError, BrokerUnavailable
from runtime.consumer import events_of_batches
from runtime.routing import connect
from runtime.worker import Hosted, schedules
from runtime.worker.delays import (
    CANCEL,
    DELAY_ID,
    DELAY_TOPIC,
    DUE,
    PARKING,
    TARGET,
    forward_producer_id,
)
from runtime.worker.lanes import Track

MAX_HELD = 10_000
POLL_S = 1.0  # the longest sleep: a stop is seen within it
HELD_BACK_S = 0.05  # the sleep while due events wait for their partitions' reads
BROKER_RETRY_S = 1.0


class Mover:
    def __init__(self, host: Hosted) -> None:
        self.host = host
        opts = host.options
        self.consumer = Consumer(opts.broker, group=opts.group, topics=[DELAY_TOPIC],
                                 member_id=opts.member_id, client_id=opts.name,
                                 session_timeout_ms=opts.session_timeout_ms)
        self.conn = connect(opts.broker)  # a Router given a cluster's endpoints
        self.heap: list[tuple[int, int, int, Event]] = []  # due ms, partition, offset, event
        self.tracks: dict[int, Track] = {}
        self.partitions: dict[str, int] = {}  # partition count of each target topic
        self.ends: dict[int, int] = {}  # each partition's end, as the broker last said
        self.generation = self.consumer.generation
        self.held_back = False  # due events wait for their partitions to be read
        self.kept: set[int] = set()  # partitions kept through a rebalance, not checked yet
        self.cancelled = 0  # held events a cancel marker dropped
        self.ticks_sent = 0
        self.tickers = schedules.from_env(int(time.time() * 1000))  # [schedules.*]
        for ticker in self.tickers:
            host.log.info("schedule %s to %s: next tick %d, due at %d ms", ticker.name,
                          ticker.section.topic, ticker.next, ticker.due(ticker.next))

    def run(self) -> int:
        host = self.host
        host.state = "running"
        host.log.info("delay mover joined group %s for %s", host.options.group, DELAY_TOPIC)
        try:
            while not host.stopping:
                self.step()
        finally:
            host.state = "stopping"
            self.commit(sync=True)
            self.consumer.close()
            self.conn.close()
        return 0

    def step(self) -> None:
        now = time.time() * 1000
        soonest = min(([self.heap[0][0]] if self.heap else [])
                      + [t.due(t.next) for t in self.tickers], default=None)
        wait = POLL_S if soonest is None else min(POLL_S, max(0.0, (soonest - now) / 1000))
        if self.held_back:  # due events wait for reads, which end the poll when they come:
            wait = HELD_BACK_S  # no busy loop meanwhile
        try:
            if len(self.heap) < MAX_HELD:
                self.host.idle = True
                batches = self.consumer.poll_batches(wait)
                for batch in batches:
                    self.ends[batch.partition] = max(self.ends.get(batch.partition, 0),
                                                     batch.end_offset)
                self.take(events_of_batches(batches))
                self.check_kept()
            else:
                time.sleep(wait)
            self.forward_due()
            self.send_ticks()
            self.commit(sync=False)
        except BrokerUnavailable as exc:
            self.host.log.warning("%s; waiting for it", exc)
            time.sleep(BROKER_RETRY_S)
        finally:
            self.host.idle = True

    def take(self, events: list[Event]) -> None:
        self.consumer.positions.clear()  # commits are the watermarks, never what was polled
        if self.consumer.generation != self.generation:  # a rebalance: keep what we own
            self.generation = self.consumer.generation
            owned = {part for _, part in self.consumer.assignment}
            self.heap = [h for h in self.heap if h[1] in owned]
            heapq.heapify(self.heap)
            self.tracks = {part: t for part, t in self.tracks.items() if part in owned}
            self.kept = set(self.tracks)
        for event in events:
            track = self.tracks.setdefault(event.partition, Track())
            if event.offset < track.next:
                continue  # delivered again after a re-join: held already
            track.order.append(event.offset)
            track.next = event.offset + 1
            cancelled = (event.headers or {}).get(CANCEL)
            if cancelled is not None:
                self.cancel(track, event.partition, text(cancelled))
                track.done.add(event.offset)
                track.moved = True
                continue
            heapq.heappush(self.heap, (due_of(event), event.partition, event.offset, event))

    def check_kept(self) -> None:
        """A partition kept through a rebalance may have been another member's in a
        generation this one never saw (two rebalances in one poll, or a re-join); if that
        member committed past what we read, it dealt with what we hold of the partition
        (forwarded it, or dropped it for a cancel marker we will never read)."""
        if not self.kept:
            return
        try:
            described = self.conn.call(p.DescribeGroup(group=self.host.options.group))
        except BrokerError as exc:
            if isinstance(exc, BrokerUnavailable):
                raise
            self.host.log.warning("committed offsets not known (%s): asked again", exc)
            return
        for gp in described.partitions:
            track = self.tracks.get(gp.partition)
            if gp.topic != DELAY_TOPIC or gp.partition not in self.kept or track is None:
                continue
            if (gp.committed or 0) > track.next:
                self.heap = [h for h in self.heap if h[1] != gp.partition]
                heapq.heapify(self.heap)
                track = self.tracks[gp.partition] = Track()
                track.next = gp.committed or 0  # what comes below it was dealt with
        self.kept.clear()

    def cancel(self, track: Track, partition: int, delay_id: str) -> None:
        """Drop the held event of ``delay_id`` (in ``partition``, before its marker)."""
        for i, (_, part, offset, event) in enumerate(self.heap):
            if part == partition and text((event.headers or {}).get(DELAY_ID, "")) == delay_id:
                del self.heap[i]
                heapq.heapify(self.heap)
                track.done.add(offset)
                track.moved = True
                self.cancelled += 1
                self.host.log.info("%s[%d]@%d cancelled (%s)", DELAY_TOPIC, part, offset,
                                   delay_id)
                return
        self.host.log.info("cancel of %s came after it was forwarded, or for no event: "
                           "nothing to do", delay_id)

    def forward_due(self) -> None:
        unread: list[tuple[int, int, int, Event]] = []  # due, but their partition is not read
        full = len(self.heap) >= MAX_HELD
        while self.heap and self.heap[0][0] <= time.time() * 1000:
            _, partition, offset, event = self.heap[0]
            if not full and (partition in self.kept or not self.read_to_end(partition)):
                unread.append(heapq.heappop(self.heap))  # its cancel may lie behind it
                continue
            self.host.idle = False
            self.host.current = (DELAY_TOPIC, partition, offset, time.monotonic())
            try:
                self.forward(event)
            except (BrokerError, ValueError) as exc:
                if isinstance(exc, BrokerUnavailable):
                    raise
                self.host.failed += 1  # cannot be delivered (bad target): logged, dropped
                self.host.log.error("%s[%d]@%d cannot be forwarded: %s", DELAY_TOPIC,
                                    partition, offset, exc)
            finally:
                self.host.current = None
            heapq.heappop(self.heap)
            track = self.tracks.get(partition)
            if track is not None:
                track.done.add(offset)
                track.moved = True
            self.host.processed += 1
        self.held_back = bool(unread)
        for held in unread:
            heapq.heappush(self.heap, held)

    def read_to_end(self, partition: int) -> bool:
        track = self.tracks.get(partition)
        return track is not None and track.next >= self.ends.get(partition, 0)

    def forward(self, event: Event) -> None:
        headers = {k: v for k, v in (event.headers or {}).items() if k not in PARKING}
        target = text((event.headers or {}).get(TARGET, ""))
        if not p.valid_topic_name(target) or target == DELAY_TOPIC:
            raise ValueError(f"no topic to forward to (header {TARGET}: {target!r})")
        count = self.partitions_of(target)
        partition = (p.partition_for_key(event.key, count) if event.key is not None
                     else event.offset % count)
        records = msgspec.msgpack.encode([[event.value, event.key, headers or None, None]])
        self.conn.call(p.Produce(topic=target, partition=partition, records=msgspec.Raw(records),
                                 acks="all", producer_id=forward_producer_id(event.partition,
                                                                             event.offset),
                                 sequence=0))

    def send_ticks(self) -> None:
        """Send each schedule's tick that is due (schedules.py: once, never early)."""
        for ticker in self.tickers:
            skipped = ticker.skipped
            tick = ticker.take(int(time.time() * 1000))
            if ticker.skipped > skipped:
                self.host.log.warning("schedule %s: %d tick(s) skipped: more than %d ms late",
                                      ticker.name, ticker.skipped - skipped, ticker.catch_up)
            if tick is None:
                continue
            value, key, headers = ticker.record(tick)
            topic = ticker.section.topic
            try:
                records = msgspec.msgpack.encode([[value, key, headers, None]])
                self.conn.call(p.Produce(
                    topic=topic, partition=ticker.partition(tick, self.partitions_of(topic)),
                    records=msgspec.Raw(records), acks="all",
                    producer_id=schedules.producer_id(ticker.name, tick), sequence=0))
            except BrokerError as exc:
                if isinstance(exc, BrokerUnavailable):
                    ticker.next = tick  # sent again once the broker answers (if in time)
                    raise
                self.host.failed += 1
                self.host.log.error("schedule %s: tick %d cannot be sent to %s: %s",
                                    ticker.name, tick, topic, exc)
                continue
            self.ticks_sent += 1

    def partitions_of(self, topic: str) -> int:
        count = self.partitions.get(topic)
        if count is None:
            try:
                meta = self.conn.call(p.Metadata(topics=[topic]))
            except BrokerError as exc:
                if exc.code != "UNKNOWN_TOPIC":
                    raise
                self.conn.call(p.CreateTopic(topic=topic, exist_ok=True))
                meta = self.conn.call(p.Metadata(topics=[topic]))
            count = self.partitions[topic] = len(meta.topics[0].partitions)
        return count

    def commit(self, sync: bool) -> None:
        marks = {(DELAY_TOPIC, part): track.watermark() for part, track in self.tracks.items()
                 if track.moved}
        for track in self.tracks.values():
            track.moved = False
        if marks:
            try:
                self.consumer.commit(marks, sync=sync)
            except BrokerError as exc:
                self.host.log.warning("commit failed (%s): the forwards since come again and "
                                      "are dropped by the broker as duplicates", exc)


def due_of(event: Event) -> int:
    try:
        return int(text((event.headers or {}).get(DUE, "0")))
    except ValueError:
        return 0  # no valid time: due now


def text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def run_hosted(host: Hosted) -> int:
    while True:
        try:
            return Mover(host).run()
        except BrokerUnavailable as exc:
            if host.stopping:
                return 0
            host.log.warning("%s; waiting for it", exc)
            time.sleep(BROKER_RETRY_S)
