"""Delayed delivery under ``rail up`` with ``[supervisor] delays = true``: a delayed event
survives kill -9 of the broker, the supervisor and the workers, arrives after its time (never
before), once, in the partition its key picks; a mover that reads ``rail.delayed`` again from
the start forwards nothing twice (the broker drops the replayed forwards as duplicates).  The
first event goes through ``rail send --delay``.  A cancelled event is never forwarded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from brokerd import protocol as p
from runtime.client import Consumer, Producer
from runtime.connection import Connection
from runtime.worker.delays import DELAY_TOPIC, MOVER_GROUP, send_delayed
from tests.helpers import ROOT, python_env, wait_for, written_lines
from tests.integration.test_supervisor import Rail, rail  # noqa: F401

RECORDER = """
import time
def handle(event, ctx):
    with open({out!r}, "a") as f:
        f.write(f"{{event.value}} {{event.partition}} {{time.time()}}\\n")
"""


def arrivals(up: Rail) -> list[tuple[str, int, float]]:
    rows = [line.split() for line in written_lines(up.out)]
    return [(v, int(part), float(t)) for v, part, t in rows]


def committed_delays(up: Rail) -> int:
    return committed_delays_at(up.api)


def test_a_delayed_event_survives_kill_9_of_everything_and_arrives_once_after_its_time(
        rail: Rail) -> None:  # noqa: F811
    rail.script("rec.py", RECORDER.format(out=str(rail.out)))
    rail.write_toml('[workers.rec]\nscript = "rec.py"\ntopics = ["orders"]\n',
                    topics="delays = true\n[topics.orders]\npartitions = 2\n")
    rail.up()
    wait_for(lambda: rail.running(MOVER_GROUP, 1), timeout=20, what="the delay mover")
    due: dict[str, float] = {}
    due["soon"] = time.time() + 1.0
    sent = subprocess.run([sys.executable, "-m", "runtime.cli", "send", "orders", "\"soon\"",
                           "--key", "b", "--delay", "1", "--broker", rail.api],
                          check=False, capture_output=True, text=True, env=python_env(), cwd=ROOT,
                          timeout=30)
    assert sent.returncode == 0, sent.stderr
    with Producer(rail.api) as producer:
        for value, key, delay in (("late", "a", 5.0), ("later", "c", 5.5)):
            due[value] = time.time() + delay
            if value == "late":  # the worker side's function, and the client's method
                send_delayed(producer, "orders", value, key=key, delay_s=delay)
            else:
                producer.send_delayed("orders", value, key=key, delay_s=delay)
        producer.flush()
    wait_for(lambda: [v for v, _, _ in arrivals(rail)] == ["soon"], timeout=10,
             what="the 1 s event")
    assert rail.proc is not None
    os.kill(rail.proc.pid, signal.SIGKILL)  # the broker and the workers die with it
    rail.proc.wait(5)
    time.sleep(0.5)
    rail.up()
    wait_for(lambda: len(arrivals(rail)) == 3, timeout=20, what="all 3 delayed events")
    time.sleep(1.0)  # a duplicate would come now
    got = arrivals(rail)
    assert sorted(v for v, _, _ in got) == ["late", "later", "soon"]
    for value, partition, at in got:
        assert at >= due[value], f"{value} came {due[value] - at:.3f} s early"
        assert partition == p.partition_for_key({"soon": "b", "late": "a", "later": "c"}[value], 2)
    # the mover reads rail.delayed from the start again: every forward is a duplicate
    scaled = rail.rail("scale", MOVER_GROUP, "0")
    assert scaled.returncode == 0, scaled.stderr
    wait_for(lambda: not rail.worker(MOVER_GROUP)["pids"], timeout=20, what="the mover gone")
    reset = Consumer(rail.api, group=MOVER_GROUP, topics=[DELAY_TOPIC], member_id="reset")
    try:
        reset.commit({(DELAY_TOPIC, part): 0 for _, part in reset.assignment}, sync=True)
    finally:
        reset.close()
    scaled = rail.rail("scale", MOVER_GROUP, "1")
    assert scaled.returncode == 0, scaled.stderr
    assert committed_delays(rail) == 0
    wait_for(lambda: committed_delays(rail) == 3, timeout=20,
             what="the mover to go through rail.delayed again")
    time.sleep(0.5)
    assert sorted(v for v, _, _ in arrivals(rail)) == ["late", "later", "soon"]


def test_ctx_send_with_a_delay_parks_the_event_in_rail_delayed(broker) -> None:
    import logging

    from runtime.dlq import header, read_all
    from runtime.worker import Context

    with Producer(broker.api) as producer:
        ctx = Context("w", "w-0", logging.getLogger("test"), producer)
        before = time.time() * 1000
        ctx.send("orders", "later", key="k", headers={"trace": "t1"}, delay_s=60)
        producer.flush()
    conn = Connection(broker.api)
    try:
        parked = read_all(conn, DELAY_TOPIC)
    finally:
        conn.close()
    assert [(e.value, e.key) for e in parked] == [("later", "k")]
    assert header(parked[0], "rail.delay.topic") == "orders"
    assert header(parked[0], "trace") == "t1"
    assert int(header(parked[0], "rail.delay.due-ms") or 0) >= before + 60_000


def test_the_mover_stops_reading_once_it_holds_max_held_events(broker, monkeypatch) -> None:
    import logging

    from runtime.worker import Hosted, Options
    from runtime.worker import mover as mover_module
    from runtime.worker.mover import Mover

    monkeypatch.setattr(mover_module, "MAX_HELD", 50)

    def park(values: range) -> None:
        with Producer(broker.api) as producer:
            for i in values:  # far in the future: nothing is due
                send_delayed(producer, "far", i, key=f"k{i}", delay_s=3600)

    park(range(60))
    host = Hosted(Options(broker=broker.api, group=MOVER_GROUP, topics=[DELAY_TOPIC],
                          name="mover"), logging.getLogger("test"))
    mover = Mover(host)
    try:
        deadline = time.monotonic() + 10
        while len(mover.heap) < 60 and time.monotonic() < deadline:
            mover.step()
        assert len(mover.heap) == 60  # one poll's worth past the cap, at most
        park(range(60, 120))
        mover.step()  # full: it sleeps (1 s at most) instead of reading
        assert len(mover.heap) == 60 and host.processed == 0
        mover.heap = sorted(mover.heap)[30:]  # as if 30 were forwarded: under the cap
        deadline = time.monotonic() + 10
        while len(mover.heap) < 90 and time.monotonic() < deadline:
            mover.step()
        assert len(mover.heap) == 90
    finally:
        mover.consumer.close()
        mover.conn.close()


def _run_mover_until(mover: Any, done: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        mover.step()


def test_a_cancelled_delayed_event_is_never_forwarded_also_when_read_again(broker) -> None:
    """A cancel read while its event is held drops it; one read after the forward changes
    nothing; the mover reading rail.delayed again from offset 0 (as after a crash before
    its commits) meets each event before its cancel and still forwards none of them."""
    import logging

    from runtime.dlq import read_all
    from runtime.worker import Hosted, Options
    from runtime.worker.delays import cancel_delayed, delay_partition
    from runtime.worker.mover import Mover

    conn = Connection(broker.api)
    conn.call(p.CreateTopic(topic=DELAY_TOPIC, partitions=3, exist_ok=True))

    def values(topic: str) -> list[Any]:
        return sorted(e.value for e in read_all(conn, topic)) if (
            topic in {t.name for t in conn.call(p.Metadata()).topics}) else []

    def delays_end() -> int:
        return sum(x.end_offset for x in conn.call(p.Metadata(topics=[DELAY_TOPIC]))
                   .topics[0].partitions)

    def mover() -> Mover:
        return Mover(Hosted(Options(broker=broker.api, group=MOVER_GROUP, topics=[DELAY_TOPIC],
                                    name="mover"), logging.getLogger("test")))

    first = mover()
    try:
        with Producer(broker.api) as producer:
            early = producer.send_delayed("orders", "early", key="ke", delay_s=0.2)
            producer.flush()
            _run_mover_until(first, lambda: values("orders") == ["early"], "the early event")
            ids = {v: producer.send_delayed("orders", v, key=f"k{v}", delay_s=1.5)
                   for v in ("a", "b", "c")}
            keyless = producer.send_delayed("orders", "keyless", delay_s=1.5)
            producer.flush()
            cancel_delayed(producer, ids["b"])  # the client function and the method
            producer.cancel_delayed(keyless)
            producer.cancel_delayed(early)  # too late: delivered already
            producer.flush()
        assert delay_partition(ids["a"]) == p.partition_for_key("ka", 3)
        _run_mover_until(first, lambda: first.cancelled == 2, "both cancels read")
        assert len(first.heap) == 2  # a and c; b and keyless left the heap at once
        _run_mover_until(first, lambda: values("orders") == ["a", "c", "early"], "a and c")
        wait = time.monotonic() + 1.0
        while time.monotonic() < wait:  # a forward of b would come by now
            first.step()
        assert values("orders") == ["a", "c", "early"]
        _run_mover_until(first, lambda: committed_delays_at(broker.api) == delays_end(),
                         "every parked event and marker committed")
    finally:
        first.consumer.close()
        first.conn.close()
    reset = Consumer(broker.api, group=MOVER_GROUP, topics=[DELAY_TOPIC], member_id="reset")
    try:
        reset.commit({(DELAY_TOPIC, part): 0 for _, part in reset.assignment}, sync=True)
    finally:
        reset.close()
    again = mover()
    try:
        _run_mover_until(again, lambda: committed_delays_at(broker.api) == delays_end(),
                         "rail.delayed read again to its end")
        # b and keyless again, and early: its marker now drops the copy read again (whose
        # forward the broker would have dropped as a duplicate)
        assert again.cancelled == 3 and values("orders") == ["a", "c", "early"]
    finally:
        again.consumer.close()
        again.conn.close()
        conn.close()


def committed_delays_at(api: str) -> int:
    conn = Connection(api)
    try:
        group = conn.call(p.DescribeGroup(group=MOVER_GROUP))
    finally:
        conn.close()
    return sum(g.committed or 0 for g in group.partitions)


def test_rail_send_delay_prints_the_id_that_rail_cancel_delayed_takes(broker) -> None:
    from runtime.dlq import header, read_all

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runtime.cli", *args, "--broker",
                               broker.api], capture_output=True, text=True, env=python_env(),
                              cwd=ROOT, timeout=30)

    sent = cli("send", "orders", '"x"', "--delay", "60")
    assert sent.returncode == 0, sent.stderr
    delay_id = sent.stdout.strip()
    assert f"rail cancel-delayed {delay_id}" in sent.stderr
    done = cli("cancel-delayed", delay_id)
    assert done.returncode == 0, done.stderr
    conn = Connection(broker.api)
    try:
        parked = read_all(conn, DELAY_TOPIC)
    finally:
        conn.close()
    assert [(e.value, header(e, "rail.delay.id"), header(e, "rail.delay.cancel"))
            for e in parked] == [("x", delay_id, None), (None, None, delay_id)]
    assert len({e.partition for e in parked}) == 1
    for bad in ("nonsense", "0-xyz", "../etc"):
        done = cli("cancel-delayed", bad)
        assert done.returncode == 2 and "is not a delay id" in done.stderr, done.stderr
    with Producer(broker.api) as producer, pytest.raises(ValueError, match="not a delay id"):
        producer.cancel_delayed("12")


def test_a_due_event_waits_for_its_partition_to_be_read_to_the_end(broker) -> None:
    """A mover reading a backlog (a restart) finds an event already due, and its cancel
    more than a poll's bytes behind it: the event is not forwarded before the cancel is
    read (it was, with the marker in the next poll)."""
    import logging

    from runtime.dlq import read_all
    from runtime.worker import Hosted, Options
    from runtime.worker.mover import Mover

    with Producer(broker.api) as producer:
        due = producer.send_delayed("orders", "cancelled", key="k", delay_s=0.1)
        for i in range(1600):  # 3.2 MB behind it, in its partition: past one poll (1 MiB)
            producer.send_delayed("orders", f"{i:04d}" + "x" * 2000, key="k", delay_s=3600)
            if i % 100 == 0:
                producer.flush()  # stored batches of 200 kB: a poll takes some of them
        producer.cancel_delayed(due)
        producer.flush()
    time.sleep(0.2)
    mover = Mover(Hosted(Options(broker=broker.api, group=MOVER_GROUP, topics=[DELAY_TOPIC],
                                 name="mover"), logging.getLogger("test")))
    try:
        _run_mover_until(mover, lambda: mover.cancelled or mover.host.processed,
                         "the cancel read or the event forwarded")
        assert (mover.cancelled, mover.host.processed) == (1, 0), "forwarded, then cancelled"
        _run_mover_until(mover, lambda: len(mover.heap) == 1600, "the rest held")
    finally:
        mover.consumer.close()
        mover.conn.close()
    conn = Connection(broker.api)
    try:
        topics = {t.name for t in conn.call(p.Metadata()).topics}
        assert "orders" not in topics or read_all(conn, "orders") == []
    finally:
        conn.close()
