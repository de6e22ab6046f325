"""A group consumer across a kill -9 of its broker: commits reach the broker and lag clears.

The consumer here works as the worker host does: poll, handle, async commit, in one thread.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

from brokerd import protocol as p
from runtime.client import Consumer, Producer
from runtime.connection import BrokerError, BrokerUnavailable, Connection
from tests.helpers import BrokerProcess, free_port, start_broker, wait_for

TOPIC, GROUP, PARTITIONS, EVENTS = "orders", "kitchen", 3, 10_000  # EVENTS twice
WORK_S = 100e-6  # what handling one event costs: a backlog is prefetched when the broker dies
SETTLE_S = 2.0  # the lag must be 0 this soon after the last event was handled


class Handler(threading.Thread):
    """Polls, handles (records what it saw), commits async; kills the broker once, in the
    middle of a batch, after handling ``kill_at`` events."""

    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(daemon=True, name="handler")
        self.broker = broker
        self.stop = threading.Event()
        self.killed = threading.Event()
        self.seen: dict[int, set[int]] = defaultdict(set)
        self.latest: dict[int, int] = {}  # partition: offset of the last event handled
        self.went_back: set[int] = set()  # partitions delivered again since the kill
        self.handled = 0
        self.kill_at: int | None = None
        self.last_handled_at = time.monotonic()
        self.acked_at_kill: dict[tuple[str, int], int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Consumer(self.broker.api, group=GROUP, topics=[TOPIC],
                          session_timeout_ms=3000) as consumer:
                while not self.stop.is_set():
                    self.step(consumer)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def step(self, consumer: Consumer) -> None:
        try:
            events = consumer.poll(0.2)
        except BrokerUnavailable:
            return  # as the worker host does: try again
        for event in events:
            self.seen[event.partition].add(event.offset)
            if event.offset <= self.latest.get(event.partition, -1):
                self.went_back.add(event.partition)
            self.latest[event.partition] = event.offset
            time.sleep(WORK_S)  # the handler's work, not a wait
            self.handled += 1
            if self.handled == self.kill_at:
                self.broker.kill9()
                self.acked_at_kill = consumer.committed
                self.went_back.clear()
                self.killed.set()
        if events:
            self.last_handled_at = time.monotonic()
            consumer.commit(sync=False)


class History:
    """The group's committed offsets as `describe_group` showed them, in order."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.conn = Connection(api, timeout_s=1.0)
        self.samples: list[dict[int, int | None]] = []
        self.last: p.DescribeGroupReply | None = None

    def sample(self) -> p.DescribeGroupReply | None:
        try:
            reply = self.conn.call(p.DescribeGroup(group=GROUP))
        except BrokerError:  # the broker is down: a new socket for when it is back
            self.conn.close()
            self.conn = Connection(self.api, timeout_s=1.0)
            return None
        self.samples.append({g.partition: g.committed for g in reply.partitions})
        self.last = reply
        return reply

    def lags(self) -> dict[int, int]:
        assert self.last is not None
        return {g.partition: g.lag for g in self.last.partitions}

    def close(self) -> None:
        self.conn.close()


def produce(api: str, start: int) -> dict[int, int]:
    """Produce EVENTS events over the partitions; return each partition's end offset."""
    with Producer(api) as producer:
        producer._call(p.CreateTopic(topic=TOPIC, partitions=PARTITIONS, exist_ok=True))
        for i in range(start, start + EVENTS):
            producer.send(TOPIC, {"n": i}, key=f"k{i}")
        producer.flush(timeout_s=30)
        meta = producer._call(p.Metadata(topics=[TOPIC]))
    return {part.partition: part.end_offset for part in meta.topics[0].partitions}


def test_lag_clears_within_seconds_of_the_work_after_a_kill_9_of_the_broker(
        tmp_path: Path) -> None:
    api_port, ingest_port = free_port(), free_port()
    broker = start_broker(tmp_path / "data", api_port=api_port, ingest_port=ingest_port)
    handler = Handler(broker)
    history = History(broker.api)
    try:
        ends = produce(broker.api, 0)
        handler.start()

        def caught_up() -> bool:
            assert handler.error is None, handler.error
            return history.sample() is not None and history.lags() == dict.fromkeys(ends, 0)

        wait_for(caught_up, 30, what="the first events handled and committed")
        handler.kill_at = EVENTS + EVENTS // 2
        ends = produce(broker.api, EVENTS)
        assert sum(ends.values()) == 2 * EVENTS
        wait_for(lambda: handler.killed.is_set() or handler.error or not history.sample(),
                 30, what="the broker killed mid-way")
        assert handler.error is None, handler.error
        broker = start_broker(tmp_path / "data", api_port=api_port, ingest_port=ingest_port)
        handler.broker = broker
        first = wait_for(history.sample, 10, what="the restarted broker")
        # What the broker acknowledged before its kill -9 is still there.
        after = {g.partition: g.committed for g in first.partitions}
        for (_, part), offset in handler.acked_at_kill.items():
            assert (after.get(part) or 0) >= offset, (part, after.get(part), offset)

        def work_done() -> bool:
            """Every partition was handled to its end since the broker came back."""
            history.sample()
            assert handler.error is None, handler.error
            return all(handler.latest.get(part) == end - 1
                       and (after.get(part) == end or part in handler.went_back)
                       for part, end in ends.items())

        wait_for(work_done, 60, what="every event handled")
        assert all(len(handler.seen[part]) == end for part, end in ends.items())

        def lag_cleared() -> bool:
            if history.sample() is not None and history.lags() == dict.fromkeys(ends, 0):
                return True
            idle = time.monotonic() - handler.last_handled_at
            assert idle < SETTLE_S, (f"lag {history.lags()} {idle:.1f} s after the last event "
                                     "was handled, with no new events")
            return False

        wait_for(lag_cleared, 60, what="the lag to clear")
        final = history.sample()
        assert final is not None
        assert {g.partition: g.committed for g in final.partitions} == ends
        for part in ends:  # no committed offset ever went backwards
            seen = [s[part] for s in history.samples if s.get(part) is not None]
            assert seen == sorted(seen), (part, seen)
    finally:
        handler.stop.set()
        handler.join(15)
        history.close()
        broker.stop()
    assert not handler.is_alive()
