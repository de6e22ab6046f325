"""A group consumer across a kill -9 of its broker: commits reach the broker and lag clears.

Each test handles a first lot of events, then a second, and kills the broker with kill -9
in the middle of the second while a backlog is prefetched, then starts it again on the same
ports and data.  With no new events, the group's lag as `describe_group` (what `rail
status` and `rail groups describe` show) reports it must reach 0 within SETTLE_S of the
last event handled, committed offsets never go backwards, and what the broker acknowledged
before its death is still there.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from brokerd import protocol as p
from runtime.client import Consumer, Producer
from runtime.connection import BrokerError, BrokerUnavailable, Connection
from tests.helpers import ROOT, BrokerProcess, free_port, python_env, start_broker, wait_for

TOPIC, GROUP, PARTITIONS, EVENTS = "orders", "kitchen", 3, 10_000  # EVENTS in each lot
KILL_AT = EVENTS + EVENTS // 2  # events handled when the broker is killed
WORK_S = 100e-6  # what handling one event costs: a backlog is prefetched when the broker dies
SETTLE_S = 2.0  # the lag must be 0 this soon after the last event was handled


class Progress:
    """What a consumer handled, in order, and when it last handled something."""

    def __init__(self) -> None:
        self.seen: dict[int, set[int]] = defaultdict(set)
        self.latest: dict[int, int] = {}  # partition: offset of the last event handled
        self.went_back: set[int] = set()  # partitions delivered again since the kill
        self.handled = 0
        self.last_handled_at = time.time()

    def record(self, partition: int, offset: int) -> None:
        self.seen[partition].add(offset)
        if offset <= self.latest.get(partition, -1):
            self.went_back.add(partition)
        self.latest[partition] = offset
        self.handled += 1

    def done_since_restart(self, ends: dict[int, int], after: dict[int, int | None]) -> bool:
        """Every partition handled to its end since the broker came back (``after``:
        its committed offsets then; a partition below its end is delivered again)."""
        return all(self.latest.get(part) == end - 1
                   and (after.get(part) == end or part in self.went_back)
                   for part, end in ends.items())


class Handler(threading.Thread):
    """In this process, as the worker host does: poll, handle, async commit; kills the
    broker once, in the middle of a batch, after handling KILL_AT events."""

    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(daemon=True, name="handler")
        self.broker = broker
        self.progress = Progress()
        self.stop = threading.Event()
        self.killed = threading.Event()
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
            time.sleep(WORK_S)  # the handler's work, not a wait
            self.progress.record(event.partition, event.offset)
            if self.progress.handled == KILL_AT:
                self.broker.kill9()
                self.acked_at_kill = consumer.committed
                self.progress.went_back.clear()
                self.killed.set()
        if events:
            self.progress.last_handled_at = time.time()
            consumer.commit(sync=False)

    def check(self) -> None:
        assert self.error is None, self.error


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

    def caught_up(self, ends: dict[int, int]) -> bool:
        return self.sample() is not None and self.lags() == dict.fromkeys(ends, 0)

    def assert_never_went_back(self) -> None:
        for part in range(PARTITIONS):
            seen = [s[part] for s in self.samples if s.get(part) is not None]
            assert seen == sorted(seen), (part, seen)

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


def assert_lag_clears_after_the_work(progress: Progress, history: History,
                                     ends: dict[int, int], after: dict[int, int | None],
                                     check: Callable[[], None]) -> None:
    def work_done() -> bool:
        history.sample()
        check()
        return progress.done_since_restart(ends, after)

    wait_for(work_done, 60, what="every event handled since the restart")
    assert all(len(progress.seen[part]) == end for part, end in ends.items())

    def lag_cleared() -> bool:
        if history.caught_up(ends):
            return True
        check()
        idle = time.time() - progress.last_handled_at
        assert idle < SETTLE_S, (f"lag {history.lags()} {idle:.1f} s after the last event "
                                 "was handled, with no new events")
        return False

    wait_for(lag_cleared, 60, what="the lag to clear")
    final = history.sample()
    assert final is not None
    assert {g.partition: g.committed for g in final.partitions} == ends
    history.assert_never_went_back()


def test_lag_clears_within_seconds_of_the_work_after_a_kill_9_of_the_broker(
        tmp_path: Path) -> None:
    api_port, ingest_port = free_port(), free_port()
    broker = start_broker(tmp_path / "data", api_port=api_port, ingest_port=ingest_port)
    handler = Handler(broker)
    history = History(broker.api)
    try:
        ends = produce(broker.api, 0)
        handler.start()
        wait_for(lambda: handler.check() or history.caught_up(ends), 30,
                 what="the first events handled and committed")
        ends = produce(broker.api, EVENTS)
        wait_for(lambda: handler.check() or handler.killed.is_set() or not history.sample(),
                 30, what="the broker killed mid-way")
        broker = start_broker(tmp_path / "data", api_port=api_port, ingest_port=ingest_port)
        handler.broker = broker
        first = wait_for(history.sample, 10, what="the restarted broker")
        after = {g.partition: g.committed for g in first.partitions}
        assert handler.killed.is_set() and handler.acked_at_kill, "the first lot was committed"
        for (_, part), offset in handler.acked_at_kill.items():  # acknowledged: not lost
            assert (after.get(part) or 0) >= offset, (part, after.get(part), offset)
        assert_lag_clears_after_the_work(handler.progress, history, ends, after, handler.check)
    finally:
        handler.stop.set()
        handler.join(15)
        history.close()
        broker.stop()
    assert not handler.is_alive()


RECORDER = """
import os, time
OUT, WORK_S = os.environ["OUT"], float(os.environ["WORK_S"])
def setup(ctx):
    ctx.state["out"] = open(OUT, "a", buffering=1)
def handle(event, ctx):
    time.sleep(WORK_S)
    ctx.state["out"].write(f"{event.partition} {event.offset} {time.time()}\\n")
"""


class Journal:
    """Reads what a worker process recorded, a line per event handled, as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.progress = Progress()
        self._read = 0

    def update(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._read)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self._read += len(complete)
        for line in complete.decode().splitlines():
            part, offset, stamp = line.split()
            self.progress.record(int(part), int(offset))
            self.progress.last_handled_at = float(stamp)


def test_a_worker_process_leaves_no_lag_after_a_kill_9_of_the_broker(tmp_path: Path) -> None:
    api_port, ingest_port = free_port(), free_port()
    broker = start_broker(tmp_path / "data", api_port=api_port, ingest_port=ingest_port)
    script = tmp_path / "recorder.py"
    script.write_text(textwrap.dedent(RECORDER))
    journal = Journal(tmp_path / "out.txt")
    history = History(broker.api)
    worker: subprocess.Popen[bytes] | None = None
    try:
        ends = produce(broker.api, 0)
        worker = subprocess.Popen(
            [sys.executable, "-m", "runtime.worker", str(script), "--broker", broker.api,
             "--group", GROUP, "--topics", TOPIC, "--name", GROUP,
             "--session-timeout-ms", "3000"],
            env={**python_env(), "OUT": str(journal.path), "WORK_S": str(WORK_S)}, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.err", "wb"))

        def alive() -> None:
            assert worker is not None and worker.poll() is None, (
                (tmp_path / "worker.err").read_text())
            journal.update()

        wait_for(lambda: alive() or history.caught_up(ends), 30,
                 what="the first events handled and committed")
        ends = produce(broker.api, EVENTS)
        wait_for(lambda: alive() or journal.progress.handled >= KILL_AT, 30,
                 what="half of the second lot handled")
        broker.kill9()
        journal.update()
        journal.progress.went_back.clear()
        broker = start_broker(tmp_path / "data", api_port=api_port, ingest_port=ingest_port)
        first = wait_for(history.sample, 10, what="the restarted broker")
        after = {g.partition: g.committed for g in first.partitions}
        assert_lag_clears_after_the_work(journal.progress, history, ends, after, alive)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(5)
        history.close()
        broker.stop()


def test_a_poll_given_up_on_a_paused_broker_skips_nothing_once_it_answers_again(
        tmp_path: Path) -> None:
    """The consumer gives up on a parked poll (BrokerUnavailable) while the broker is
    paused; the broker, woken, still answers that poll, whose replies the consumer no longer
    reads, and moves its position past them.  The consumer must join again, so that the
    broker restarts from the committed offsets, and see every event."""
    import os
    broker = start_broker(tmp_path / "data")
    try:
        with Producer(broker.api) as producer:
            for i in range(50):
                producer.send("t", i, key=str(i))
            producer.flush(10)
        seen: set[int] = set()
        with Consumer(broker.api, group="g", topics=["t"], timeout_s=1.0,
                      session_timeout_ms=60_000) as consumer:
            wait_for(lambda: seen.update(e.value for e in consumer.poll(0.2)) or len(seen) == 50,
                     timeout=10, what="the first 50 events")
            consumer.commit()
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                gave_up = False
                deadline = time.monotonic() + 15
                while not gave_up and time.monotonic() < deadline:
                    try:
                        consumer.poll(0.5)
                    except BrokerUnavailable:
                        gave_up = True
                assert gave_up, "the consumer gave up on the paused broker"
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            with Producer(broker.api) as producer:
                for i in range(50, 100):
                    producer.send("t", i, key=str(i))
                producer.flush(10)

            def all_seen() -> bool:
                try:
                    seen.update(e.value for e in consumer.poll(0.2))
                except BrokerUnavailable:
                    pass
                return len(seen) == 100
            wait_for(all_seen, timeout=20, what="the 50 events sent after the pause")
    finally:
        broker.stop()
