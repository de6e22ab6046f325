"""Graceful drain under ``rail up``: ``rail restart NAME`` lets the running handlers of a
concurrent worker finish and commit before its process goes, and the other workers keep
handling events meanwhile."""

from __future__ import annotations

import time
from pathlib import Path

from brokerd import protocol as p
from runtime.client import Producer
from runtime.connection import Connection
from tests.helpers import wait_for, written_lines
from tests.integration.test_supervisor import APPENDER, Rail, rail  # noqa: F401
from tests.integration.test_worker import Workers, workers  # noqa: F401

SLOW = """
import os, time
def handle(event, ctx):
    with open({out!r}, "a") as f:
        f.write(f"start {{event.offset}}\\n")
    time.sleep(4)
    with open({out!r}, "a") as f:
        f.write(f"end {{event.offset}} {{os.getpid()}}\\n")
"""


def test_rail_restart_drains_in_flight_events_and_never_stalls_other_workers(
        rail: Rail) -> None:  # noqa: F811
    slow_out = rail.folder / "slow.txt"
    rail.script("slow.py", SLOW.format(out=str(slow_out)))
    rail.script("fast.py", APPENDER.format(out=str(rail.out)))
    rail.write_toml('[workers.slow]\nscript = "slow.py"\ntopics = ["jobs"]\nconcurrency = 4\n'
                    'drain_timeout_s = 10\n'
                    '[workers.fast]\nscript = "fast.py"\ntopics = ["orders"]\n',
                    topics="[topics.orders]\npartitions = 1\n[topics.jobs]\npartitions = 1\n")
    rail.up()
    with Producer(rail.api) as producer:
        for i in range(4):
            producer.send("jobs", i, key=f"k{i}")
    wait_for(lambda: slow_out.exists() and slow_out.read_text().count("start") == 4,
             timeout=20, what="4 slow handlers running")
    old_pid = rail.worker("slow")["pids"][0]
    restarted = rail.rail("restart", "slow")
    assert restarted.returncode == 0, restarted.stderr
    rail.send(range(10))  # the fast worker handles these while slow drains
    wait_for(lambda: sorted(rail.seen()) == list(range(10)), timeout=3,
             what="the other worker to handle events during the drain")
    assert "end" not in slow_out.read_text()  # the drain is still going on
    wait_for(lambda: slow_out.read_text().count("end") == 4, timeout=10,
             what="the 4 running events to finish")
    ends = [line.split() for line in slow_out.read_text().splitlines() if line.startswith("end")]
    assert {int(pid) for _, _, pid in ends} == {old_pid}  # finished by the draining process
    wait_for(lambda: rail.running("slow", 1) and rail.worker("slow")["pids"][0] != old_pid,
             timeout=20, what="slow restarted")
    time.sleep(1)
    conn = Connection(rail.api)
    try:
        group = conn.call(p.DescribeGroup(group="slow"))
    finally:
        conn.close()
    assert {g.partition: g.committed for g in group.partitions} == {0: 4}
    assert slow_out.read_text().count("start") == 4  # nothing handled twice


EVENTS = 24  # 12 s of handling for one replica at concurrency 4: the second joins well before
STAMPS = """
import os, time
def handle(event, ctx):
    with open({out!r}, "a") as f:
        f.write(f"start {{event.partition}} {{event.offset}} {{os.getpid()}} {{time.time()}}\\n")
    time.sleep(2)
    with open({out!r}, "a") as f:
        f.write(f"end {{event.partition}} {{event.offset}} {{os.getpid()}} {{time.time()}}\\n")
"""


def test_a_rebalance_drains_the_moved_partition_before_its_new_owner_starts(
        workers: Workers, tmp_path: Path) -> None:  # noqa: F811
    """A second replica joins while the first runs 4 slow handlers over 2 partitions: the
    partition that moves is handed over only once its running handlers finished and were
    committed, so every event is handled once and the two processes never run events of
    the same partition at the same time."""
    out = tmp_path / "stamps.txt"
    with Producer(workers.broker.api) as producer:
        producer._call(p.CreateTopic(topic="orders", partitions=2))
        for i in range(EVENTS):
            producer.send("orders", i, partition=i % 2, key=f"k{i}")
    script = workers.script(STAMPS.format(out=str(out)))
    flags = ("--concurrency", "4", "--drain-timeout-s", "20")
    first = workers.start(script, *flags)
    wait_for(lambda: sum(line.startswith("start") for line in written_lines(out)) >= 4, 20,
             what="4 handlers running in the first replica")
    second = workers.start(script, *flags)
    wait_for(lambda: sum(line.startswith("end") for line in written_lines(out)) >= EVENTS, 90,
             what="every event handled")
    time.sleep(1)
    rows = [line.split() for line in written_lines(out)]
    ends = [(int(q), int(o)) for kind, q, o, _, _ in rows if kind == "end"]
    assert sorted(ends) == sorted({(i % 2, i // 2) for i in range(EVENTS)}), \
        "handled twice or lost"
    pids = {int(pid) for _, _, _, pid, _ in rows}
    assert pids == {first.pid, second.pid}, "the second replica took no partition"
    for part in (0, 1):  # per partition, one process at a time
        spans: dict[int, list[float]] = {}
        for kind, q, _, pid, at in rows:
            if int(q) == part:
                spans.setdefault(int(pid), []).append(float(at))
        if len(spans) == 2:
            (a_first, a_last), (b_first, b_last) = sorted(
                (min(v), max(v)) for v in spans.values())
            assert a_last <= b_first, f"partition {part}: both processes ran its events at once"
