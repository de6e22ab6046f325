"""Delayed delivery under ``rail up`` with ``[supervisor] delays = true``: a delayed event
survives kill -9 of the broker, the supervisor and the workers, arrives after its time (never
before), once, in the partition its key picks; a mover that reads ``rail.delayed`` again from
the start forwards nothing twice.  The first event goes through ``rail send --delay`` (the broker drops the replayed forwards as duplicates)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
    conn = Connection(up.api)
    try:
        group = conn.call(p.DescribeGroup(group=MOVER_GROUP))
    finally:
        conn.close()
    return sum(g.committed or 0 for g in group.partitions)


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
