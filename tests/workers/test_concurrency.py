"""Concurrency within a partition (``--concurrency N``): different keys side by side, one
key in offset order, the committed offset the lowest unfinished one, so a kill -9 skips
nothing and redelivers only what was not committed."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from pathlib import Path

from brokerd import protocol as p
from runtime.client import Producer
from tests.helpers import wait_for, written_lines
from tests.integration.test_worker import Workers, committed, zero_lag

# The figure: 100,000 events (RAIL_WORKER_KILL_EVENTS picks another count).
KILL_EVENTS = int(os.environ.get("RAIL_WORKER_KILL_EVENTS", "100000"))

RECORD = """
import os, random, time
FD = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
PID = os.getpid()
SLEEP = float(os.environ.get("SLEEP", "0"))
def handle(event, ctx):
    time.sleep(random.random() * SLEEP)
    os.write(FD, f"{PID} {event.partition} {event.offset} {event.key}\\n".encode())
"""

ASYNC_RECORD = """
import asyncio, os, random
FD = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
PID = os.getpid()
async def handle(event, ctx):
    await asyncio.sleep(float(os.environ["SLEEP"]) * random.random())
    os.write(FD, f"{PID} {event.partition} {event.offset} {event.key}\\n".encode())
"""


def produce_keyed(api: str, count: int, keys: int, partitions: int) -> dict[int, dict[int, str]]:
    """``count`` events, key ``k{i % keys}``; the key of each (partition, offset)."""
    where: dict[int, dict[int, str]] = defaultdict(dict)

    def noted(key: str):
        def note(partition: int, offset: int, error: object) -> None:
            assert error is None
            where[partition][offset] = key
        return note

    with Producer(api) as producer:
        producer._call(p.CreateTopic(topic="orders", partitions=partitions, exist_ok=True))
        for i in range(count):
            key = f"k{i % keys}"
            producer.send("orders", i, key=key, callback=noted(key))
        producer.flush()
    return where


def records(out: Path) -> list[tuple[int, int, int, str]]:
    rows = []
    for line in written_lines(out):
        pid, partition, offset, key = line.split()
        rows.append((int(pid), int(partition), int(offset), key))
    return rows


def test_kill_9_under_concurrency_skips_nothing_keeps_key_order_and_redelivers_only_uncommitted(
        workers: Workers, tmp_path: Path) -> None:
    count, keys = KILL_EVENTS, 1_000
    where = produce_keyed(workers.broker.api, count, keys, partitions=2)
    out = tmp_path / "out.txt"
    script = workers.script(RECORD)
    env = {"OUT": str(out), "SLEEP": "0.002"}
    first = workers.start(script, "--concurrency", "16", env=env)
    wait_for(lambda: len(records(out)) >= count // 3, timeout=count / 100,
             what="a third handled")
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    time.sleep(0.3)  # a commit sent just before the kill may still land
    at_kill = committed(workers.broker)
    assert 0 < sum(at_kill.values()) < count, at_kill
    second = workers.start(script, "--concurrency", "16", env=env)
    wait_for(lambda: zero_lag(workers.broker), timeout=count / 100,
             what="lag 0 after the restart")
    rows = records(out)
    seen = {(part, off) for _, part, off, _ in rows}
    assert seen == {(part, off) for part, offs in where.items() for off in offs}, "skipped"
    by_run: dict[tuple[int, str], list[int]] = defaultdict(list)
    for pid, part, off, key in rows:
        assert where[part][off] == key
        by_run[(pid, key)].append(off)
    for (pid, key), offsets in by_run.items():
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), (pid, key)
    handled = defaultdict(int)
    for _, part, off, _ in rows:
        handled[(part, off)] += 1
    twice = {k for k, n in handled.items() if n > 1}
    assert all(n <= 2 for n in handled.values())
    assert all(off >= at_kill.get(part, 0) for part, off in twice), "a committed event came again"
    # the new process starts at the committed offsets and handles every event from there
    again = {(part, off) for pid, part, off, _ in rows if pid == second.pid}
    assert again == {(part, off) for part, offs in where.items() for off in offs
                     if off >= at_kill.get(part, 0)}
    assert first.pid != second.pid


def test_different_keys_run_side_by_side_and_one_key_in_order(workers: Workers,
                                                              tmp_path: Path) -> None:
    where = produce_keyed(workers.broker.api, 300, 30, partitions=1)
    out = tmp_path / "out.txt"
    started = time.monotonic()
    workers.start(workers.script(RECORD), "--concurrency", "30",
                  env={"OUT": str(out), "SLEEP": "0.1"})
    wait_for(lambda: zero_lag(workers.broker), timeout=30, what="lag 0")
    elapsed = time.monotonic() - started
    # one at a time that is ~15 s of sleeping; 30 lanes side by side make it ~0.5 s
    assert elapsed < 8, elapsed
    by_key: dict[str, list[int]] = defaultdict(list)
    for _, _, off, key in records(out):
        by_key[key].append(off)
    assert {k: v for k, v in by_key.items()} == {
        k: sorted(off for off, kk in where[0].items() if kk == k) for k in by_key}
    assert len(by_key) == 30


def test_async_handlers_run_as_tasks_in_key_order(workers: Workers, tmp_path: Path) -> None:
    where = produce_keyed(workers.broker.api, 400, 20, partitions=1)
    out = tmp_path / "out.txt"
    started = time.monotonic()
    workers.start(workers.script(ASYNC_RECORD), "--concurrency", "50",
                  env={"OUT": str(out), "SLEEP": "0.1"})
    wait_for(lambda: zero_lag(workers.broker), timeout=30, what="lag 0")
    assert time.monotonic() - started < 10  # one at a time: ~20 s
    by_key: dict[str, list[int]] = defaultdict(list)
    for _, _, off, key in records(out):
        by_key[key].append(off)
    for key, offsets in by_key.items():
        assert offsets == sorted(off for off, kk in where[0].items() if kk == key)
    assert sum(len(v) for v in by_key.values()) == 400


def test_sigterm_drains_running_handlers_then_commits(workers: Workers, tmp_path: Path) -> None:
    produce_keyed(workers.broker.api, 4, 4, partitions=1)
    out = tmp_path / "out.txt"
    script = workers.script("""
        import os, time
        def handle(event, ctx):
            with open(os.environ["OUT"], "a") as f:
                f.write(f"start {event.offset}\\n")
            time.sleep(1.5)
            with open(os.environ["OUT"], "a") as f:
                f.write(f"end {event.offset}\\n")
        """)
    proc = workers.start(script, "--concurrency", "4", "--drain-timeout-s", "10",
                         env={"OUT": str(out)})
    wait_for(lambda: out.exists() and out.read_text().count("start") == 4, timeout=20,
             what="4 handlers running")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert sorted(out.read_text().split("\n")[4:8]) == [f"end {i}" for i in range(4)]
    assert committed(workers.broker) == {0: 4}


def test_drain_timeout_leaves_a_stuck_handler_uncommitted(workers: Workers,
                                                          tmp_path: Path) -> None:
    produce_keyed(workers.broker.api, 3, 3, partitions=1)
    out = tmp_path / "out.txt"
    script = workers.script("""
        import os, time
        def handle(event, ctx):
            if event.offset == 1:
                time.sleep(60)
            with open(os.environ["OUT"], "a") as f:
                f.write(f"{event.offset}\\n")
        """)
    proc = workers.start(script, "--concurrency", "3", "--drain-timeout-s", "0.5",
                         env={"OUT": str(out)})
    wait_for(lambda: out.exists() and len(out.read_text().split()) == 2, timeout=20,
             what="offsets 0 and 2 handled")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert committed(workers.broker) == {0: 1}  # 1 is unfinished: it comes again
