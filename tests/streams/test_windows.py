"""Event-time windows: tumbling and hopping, emit on update and on close, late events inside
and outside the grace period, retention; checked against a reference computed offline, also
under kill -9."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest

from brokerd.protocol import partition_for_key
from runtime.connection import Connection
from runtime.streams import changelog, query
from tests.helpers import ROOT, BrokerProcess, python_env
from tests.streams.harness import (
    CHUNK,
    Replica,
    pause,
    produce,
    read,
    run_and_kill,
    wait_caught_up,
    write_script,
)
from tests.streams.test_stateless import SEEDS

SIZE, GRACE, HOP, GAP = 1000, 300, 500, 40
PIPELINE = f"""
app = Pipeline("win", source="orders")
(app.stream.group_by().window(Tumbling({SIZE}, grace_ms={GRACE}), emit="close")
    .count("per-second").to("closed"))
(app.stream.group_by().window(Hopping({SIZE}, {HOP}, grace_ms={GRACE}), emit="update")
    .sum("hopping", lambda v: v["n"]).to("updates"))
(app.stream.group_by().window(Session({GAP}, grace_ms={GRACE}), emit="close")
    .count("sessions").to("sessions"))
run_hosted = app.run_hosted
"""


def starts(ts: int, advance: int) -> list[int]:
    return [s for s in range(ts - ts % advance - SIZE, ts + 1, advance) if s >= 0 and s <= ts < s + SIZE]


def session_reference(items: list[tuple[str, dict, int]], partitions: int) -> tuple[Counter, int]:
    """Closed sessions (key, first, last, count) and late events, per input partition."""
    closed: Counter = Counter()
    late = 0
    by_partition: dict[int, list] = defaultdict(list)
    for item in items:
        by_partition[partition_for_key(item[0], partitions)].append(item)
    for part_items in by_partition.values():
        now = -1
        open_: dict[str, list[list[int]]] = defaultdict(list)  # key -> [first, last, count]
        for key, _v, ts in part_items:
            now = max(now, ts)
            for k, sessions in open_.items():
                for s in [s for s in sessions if s[1] + GAP + GRACE <= now]:
                    sessions.remove(s)
                    closed[(k, s[0], s[1], s[2])] += 1
            if ts + GAP + GRACE <= now:
                late += 1
                continue
            near = [s for s in open_[key] if s[0] - GAP <= ts <= s[1] + GAP]
            merged = [min([ts] + [s[0] for s in near]), max([ts] + [s[1] for s in near]),
                      1 + sum(s[2] for s in near)]
            open_[key] = [s for s in open_[key] if s not in near] + [merged]
    return closed, late


def reference(items: list[tuple[str, dict, int]], partitions: int) -> tuple[Counter, Counter, int]:
    """What the pipeline must emit, simulated per input partition (stream time is per task)."""
    closed: Counter = Counter()
    updates: Counter = Counter()
    late = 0
    by_partition: dict[int, list] = defaultdict(list)
    for item in items:
        by_partition[partition_for_key(item[0], partitions)].append(item)
    for part_items in by_partition.values():
        now = -1
        counts: Counter = Counter()
        sums: Counter = Counter()
        for key, v, ts in part_items:
            now = max(now, ts)
            for start in starts(ts, SIZE):
                if start + SIZE + GRACE <= now:
                    late += 1
                else:
                    counts[(key, start)] += 1
            for start in starts(ts, HOP):
                if start + SIZE + GRACE <= now:
                    late += 1
                else:
                    sums[(key, start)] += v["n"]
                    updates[(key, start, sums[(key, start)])] += 1
        for (key, start), n in counts.items():
            if start + SIZE + GRACE <= now:
                closed[(key, start, n)] += 1
    return closed, updates, late


def emitted(broker: BrokerProcess) -> tuple[Counter, Counter]:
    closed = Counter((e.key, e.value["start"], e.value["value"]) for e in read(broker, "closed"))
    updates = Counter((e.key, e.value["start"], e.value["value"]) for e in read(broker, "updates"))
    return closed, updates


def late_counted(broker: BrokerProcess, partitions: int) -> int:
    conn = Connection(broker.api)
    try:
        return sum(changelog.last_checkpoint(conn, "win.changelog", part).late
                   for part in range(partitions))
    finally:
        conn.close()


def test_late_events_inside_the_grace_period_count_and_outside_are_dropped(
        broker: BrokerProcess, tmp_path: Path) -> None:
    items = [("a", {"n": 1}, 100), ("a", {"n": 2}, 1200),  # stream time 1200
             ("a", {"n": 3}, 900),    # window [0,1000) closes at 1300: inside grace, counted
             ("a", {"n": 4}, 1350),   # stream time 1350: [0,1000) closes
             ("a", {"n": 5}, 950),    # [0,1000) is closed: dropped there; [500,1500) is not
             ("a", {"n": 6}, 5000)]   # closes [1000,2000); [0,1000) and older expire
    produce(broker, "orders", items, 1)
    replica = Replica(broker, write_script(tmp_path, PIPELINE), tmp_path / "state", "w-0")
    try:
        wait_caught_up(broker, "win")
    finally:
        assert replica.stop() == 0, replica.log()
    closed, updates = emitted(broker)
    assert closed == Counter({("a", 0, 2): 1, ("a", 1000, 2): 1})
    assert ("a", 0, 4) in updates and ("a", 500, 14) in updates  # 3 counted, 5 in [500, 1500)
    assert not any(s == 0 and v > 4 for _k, s, v in updates)  # 5 never reached [0, 1000)
    want_closed, want_updates, want_late = reference(items, 1)
    assert (closed, updates) == (want_closed, want_updates) and want_late == 2
    assert late_counted(broker, 1) == 2 + 1  # and 950 + gap + grace <= 1350: a late session
    conn = Connection(broker.api)
    try:  # retention is size + grace: at stream time 5000 only the open window is left
        kept = dict(query.decoded(query.table(conn, "win", "per-second")))
    finally:
        conn.close()
    assert kept == {("a", 5000): [1, False]}
    got = subprocess.run([sys.executable, "-m", "runtime.cli", "streams", "get", "win",
                          "per-second", '["a", 5000]', "--json-key"], check=False, cwd=ROOT,
                         env={**python_env(), "RAIL_BROKER": broker.api}, text=True,
                         capture_output=True, timeout=60)
    assert got.returncode == 0 and json.loads(got.stdout) == [1, False], got.stderr


@pytest.mark.parametrize("seed", SEEDS)
def test_windowed_outputs_are_exact_after_kill_9(broker: BrokerProcess, tmp_path: Path,
                                                  seed: int) -> None:
    rng = random.Random(seed)
    script = write_script(tmp_path, PIPELINE)
    items = [(f"k{i % 5}", {"n": i}, 10_000 + i * 5 - rng.choice([0, 0, 0, 200, 700, 2000]))
             for i in range(3200)]
    mid_stream = 0
    for i in range(0, len(items), CHUNK):
        mid_stream += run_and_kill(broker, script, tmp_path / "state", "w-0", "win",
                                   items[i:i + CHUNK], 2, pause(rng, i, len(items), mid_stream))
        if rng.random() < 0.3:
            shutil.rmtree(tmp_path / "state", ignore_errors=True)  # restore from changelog
    replica = Replica(broker, script, tmp_path / "state", "w-0")
    try:
        wait_caught_up(broker, "win")
    finally:
        assert replica.stop() == 0, replica.log()
    want_closed, want_updates, want_late = reference(items, 2)
    want_sessions, sessions_late = session_reference(items, 2)
    assert want_late > 0 and want_closed and sessions_late > 0 and len(want_sessions) > 10
    assert emitted(broker) == (want_closed, want_updates)
    assert Counter((e.key, e.value["start"], e.value["end"], e.value["value"])
                   for e in read(broker, "sessions")) == want_sessions
    assert late_counted(broker, 2) == want_late + sessions_late


SESSIONS = """
app = Pipeline("sess", source="orders")
grouped = app.stream.group_by()
grouped.window(Session(100, grace_ms=200), emit="close").count("closed").to("sessions-closed")
grouped.window(Session(100, grace_ms=200), emit="update").sum("sums", lambda v: v).to("sessions")
run_hosted = app.run_hosted
"""


def test_session_windows_merge_close_and_drop_late_events(broker: BrokerProcess,
                                                          tmp_path: Path) -> None:
    times = [0, 50, 300, 200, 120, 1000, 650, 800]
    # 0,50: one session; 300: another; 200 extends it back; 120 bridges both (merge, 5);
    # 1000 closes [0,300]; 650 is late (650 + gap + grace <= 1000); 800 starts a session
    produce(broker, "orders", [("a", 1, t) for t in times], 1)
    replica = Replica(broker, write_script(tmp_path, SESSIONS), tmp_path / "state", "ss-0")
    try:
        wait_caught_up(broker, "sess")
    finally:
        assert replica.stop() == 0, replica.log()
    closed = [(e.key, e.value) for e in read(broker, "sessions-closed")]
    assert closed == [("a", {"start": 0, "end": 300, "value": 5})]
    updates = [(e.value["start"], e.value["end"], e.value["value"])
               for e in read(broker, "sessions")]
    assert updates == [(0, 0, 1), (0, 50, 2), (300, 300, 1), (200, 300, 2), (0, 300, 5),
                       (1000, 1000, 1), (800, 800, 1)]
    conn = Connection(broker.api)
    try:  # [0,300] expired at stream time 600 (retention gap + grace); two are still open
        assert dict(query.decoded(query.table(conn, "sess", "closed"))) == {
            ("a", 1000): [1, False, 1000], ("a", 800): [1, False, 800]}
        assert changelog.last_checkpoint(conn, "sess.changelog", 0).late == 2
    finally:
        conn.close()


# The source's only operator is a tumbling window emitting on close: the task hands it the
# whole batch of events (WindowedTable.run), with decoding, late events and failures inside.
BATCHED = f"""
import msgspec

class Order(msgspec.Struct):
    n: int

def amount(order):
    if order.n % 97 == 0:
        raise ValueError("no amount")
    return order.n

app = Pipeline("tumble", source="orders", value_type=Order)
(app.stream.group_by().window(Tumbling({SIZE}, grace_ms={GRACE}), emit="close")
    .sum("totals", amount).to("totals"))
run_hosted = app.run_hosted
"""


def batched_reference(items: list[tuple[str, dict, int]], partitions: int
                      ) -> tuple[Counter, int, int]:
    """Closed windows (key, start, sum), late events and dead letters, per partition."""
    closed: Counter = Counter()
    late = failed = 0
    by_partition: dict[int, list] = defaultdict(list)
    for item in items:
        by_partition[partition_for_key(item[0], partitions)].append(item)
    for part_items in by_partition.values():
        now = -1
        sums: Counter = Counter()
        for key, v, ts in part_items:
            if not isinstance(v["n"], int):  # fails to decode: stream time stays
                failed += 1
                continue
            now = max(now, ts)
            start = ts - ts % SIZE
            if start + SIZE + GRACE <= now:
                late += 1
            elif v["n"] % 97 == 0:
                failed += 1
            else:
                sums[(key, start)] += v["n"]
        closed.update((key, start, n) for (key, start), n in sums.items()
                      if start + SIZE + GRACE <= now)
    return closed, late, failed


@pytest.mark.parametrize("seed", SEEDS)
def test_a_window_that_takes_whole_batches_is_exact_after_kill_9(
        broker: BrokerProcess, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    script = write_script(tmp_path, BATCHED)
    items: list[tuple[str, dict[str, Any], int]] = [
        (f"k{i % 5}", {"n": i}, 10_000 + i * 5 - rng.choice([0, 0, 0, 200, 700, 2000]))
        for i in range(3200)]
    items[1234] = ("k4", {"n": "x"}, items[1234][2])  # does not decode: dead letter
    mid_stream = 0
    for i in range(0, len(items), CHUNK):
        mid_stream += run_and_kill(broker, script, tmp_path / "state", "t-0", "tumble",
                                   items[i:i + CHUNK], 2, pause(rng, i, len(items), mid_stream))
        if rng.random() < 0.3:
            shutil.rmtree(tmp_path / "state", ignore_errors=True)  # restore from changelog
    assert mid_stream > 0, "no kill landed mid-stream: the test proves nothing"
    replica = Replica(broker, script, tmp_path / "state", "t-0")
    try:
        wait_caught_up(broker, "tumble")
    finally:
        assert replica.stop() == 0, replica.log()
    want_closed, want_late, want_failed = batched_reference(items, 2)
    assert want_late > 0 and want_failed > 10 and len(want_closed) > 50
    assert Counter((e.key, e.value["start"], e.value["value"])
                   for e in read(broker, "totals")) == want_closed
    assert len(read(broker, "orders.dlq")) == want_failed
    conn = Connection(broker.api)
    try:
        assert sum(changelog.last_checkpoint(conn, "tumble.changelog", part).late
                   for part in range(2)) == want_late
    finally:
        conn.close()


def test_the_batched_window_stores_every_change_at_each_commit(broker: BrokerProcess,
                                                                tmp_path: Path) -> None:
    """A window updated across commits (its key's cached window reused) is written at each
    commit, to the local file and to the changelog: what a restore starts from."""
    from brokerd import protocol as p
    from runtime.consumer import Event
    from runtime.streams import Pipeline, Tumbling
    from runtime.streams.localstore import LocalStore
    from runtime.streams.sender import Sender
    from runtime.streams.tables import encode_key
    from runtime.streams.task import Task

    app = Pipeline("unit", source="orders", state_dir=tmp_path)
    app.stream.group_by().window(Tumbling(SIZE), emit="close").count("n").to("out")
    app.freeze()
    conn = Connection(broker.api)
    try:
        for topic, config in (("orders", {}), ("out", {}),
                              ("unit.changelog", {"cleanup_policy": "compact"})):
            conn.call(p.CreateTopic(topic=topic, config=config, exist_ok=True))
        task = Task(app, "orders", 0, conn, Sender(conn), {"out": 1, "orders.dlq": 1},
                    tmp_path)
        task.restore()
        assert app.stream.run is not None  # the batched path
        for first in (0, 3, 6):  # three commits, all in window [0, SIZE)
            task.process([Event("orders", 0, i, {}, "k", None, 10 + i)
                          for i in range(first, first + 3)])
            task.commit()
            task.settle()
            stored = LocalStore(tmp_path / "unit" / "orders-0.sqlite")
            try:
                assert msgspec.msgpack.decode(stored.get("n", encode_key(["k", 0]))) == \
                    [first + 3, False]
            finally:
                stored.close()
        logged = changelog.read(conn, "unit.changelog", 0)
        assert [u[2] for u in logged.updates] == [msgspec.msgpack.encode([c, False])
                                                  for c in (3, 6, 9)]
        task.close()
    finally:
        conn.close()
