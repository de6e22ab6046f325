"""Event-time windows: tumbling and hopping, emit on update and on close, late events inside
and outside the grace period, retention; checked against a reference computed offline, also
under kill -9."""

from __future__ import annotations

import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from brokerd.protocol import partition_for_key
from runtime.connection import Connection
from runtime.streams import changelog, query
from tests.helpers import BrokerProcess
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

SIZE, GRACE, HOP = 1000, 300, 500
PIPELINE = f"""
app = Pipeline("win", source="orders")
(app.stream.group_by().window(Tumbling({SIZE}, grace_ms={GRACE}), emit="close")
    .count("per-second").to("closed"))
(app.stream.group_by().window(Hopping({SIZE}, {HOP}, grace_ms={GRACE}), emit="update")
    .sum("hopping", lambda v: v["n"]).to("updates"))
run_hosted = app.run_hosted
"""


def starts(ts: int, advance: int) -> list[int]:
    return [s for s in range(ts - ts % advance - SIZE, ts + 1, advance) if s >= 0 and s <= ts < s + SIZE]


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
    assert late_counted(broker, 1) == 2
    want_closed, want_updates, want_late = reference(items, 1)
    assert (closed, updates) == (want_closed, want_updates) and want_late == 2
    conn = Connection(broker.api)
    try:  # retention is size + grace: at stream time 5000 only the open window is left
        kept = dict(query.decoded(query.table(conn, "win", "per-second")))
    finally:
        conn.close()
    assert kept == {("a", 5000): [1, False]}


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
    assert want_late > 0 and want_closed
    assert emitted(broker) == (want_closed, want_updates)
    assert late_counted(broker, 2) == want_late
