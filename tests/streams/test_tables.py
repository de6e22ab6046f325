"""Tables under kill -9, lost local files and a rebalance between two replicas: the final
tables and the update streams equal the reference exactly."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from runtime.connection import Connection
from runtime.streams import query
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

PARTITIONS = 3
PIPELINE = """
app = Pipeline("tally", source="orders")
app.stream.group_by().count("counts").to("counts-out")
app.stream.group_by().sum("totals", lambda v: v["n"])
app.stream.group_by().aggregate("last3", list, lambda acc, v: (acc + [v["n"]])[-3:])
run_hosted = app.run_hosted
"""


def orders(start: int, count: int) -> list[tuple[str, dict, int]]:
    return [(f"k{i % 17}", {"n": i}, 1_000 + i) for i in range(start, start + count)]


def check_exact(broker: BrokerProcess, items: list[tuple[str, dict, int]]) -> None:
    counts: Counter = Counter()
    totals: Counter = Counter()
    last3: dict[str, list[int]] = defaultdict(list)
    for key, v, _ in items:
        counts[key] += 1
        totals[key] += v["n"]
        last3[key] = (last3[key] + [v["n"]])[-3:]
    conn = Connection(broker.api)
    try:
        assert dict(query.decoded(query.table(conn, "tally", "counts"))) == dict(counts)
        assert dict(query.decoded(query.table(conn, "tally", "totals"))) == dict(totals)
        assert dict(query.decoded(query.table(conn, "tally", "last3"))) == dict(last3)
        assert query.get(conn, "tally", "counts", "k3") == counts["k3"]
    finally:
        conn.close()
    updates: dict[str, list[int]] = defaultdict(list)
    for event in read(broker, "counts-out"):
        updates[event.key].append(event.value)
    assert {k: v for k, v in updates.items()} == {k: list(range(1, n + 1))
                                                   for k, n in counts.items()}


@pytest.mark.parametrize("seed", SEEDS)
def test_tables_are_exact_after_kill_9_and_lost_local_files(
        broker: BrokerProcess, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    script = write_script(tmp_path, PIPELINE)
    state = tmp_path / "state"
    items = orders(0, 4000)
    mid_stream = 0
    for i in range(0, len(items), CHUNK):
        mid_stream += run_and_kill(broker, script, state, "t-0", "tally", items[i:i + CHUNK],
                                   PARTITIONS, pause(rng, i, len(items), mid_stream))
        if rng.random() < 0.5:
            shutil.rmtree(state, ignore_errors=True)  # as if the partitions moved host
    assert mid_stream > 0, "no kill landed mid-stream: the test proves nothing"
    shutil.rmtree(state, ignore_errors=True)  # the last run restores from the changelog
    replica = Replica(broker, script, state, "t-0")
    try:
        wait_caught_up(broker, "tally")
    finally:
        assert replica.stop() == 0, replica.log()
    assert replica.log().count("restored from changelog") == PARTITIONS
    check_exact(broker, items)


def test_tables_are_exact_across_a_rebalance_between_two_replicas(
        broker: BrokerProcess, tmp_path: Path) -> None:
    script = write_script(tmp_path, PIPELINE)
    a = Replica(broker, script, tmp_path / "a", "t-a")
    b = None
    try:
        produce(broker, "orders", orders(0, 1500), PARTITIONS)
        a.wait_running()
        b = Replica(broker, script, tmp_path / "b", "t-b")  # takes partitions mid-stream
        b.wait_running()
        produce(broker, "orders", orders(1500, 1500), PARTITIONS)
        wait_caught_up(broker, "tally")
        assert "restored from changelog" in b.log()
        assert b.stop() == 0  # its partitions go back to a, whose files for them are old
        produce(broker, "orders", orders(3000, 1500), PARTITIONS)
        wait_caught_up(broker, "tally")
        assert a.log().count("restored from changelog") >= 1, a.log()
    finally:
        a.stop()
        if b is not None:
            b.stop()
    check_exact(broker, orders(0, 4500))


def test_rail_streams_get_prints_a_key_and_says_when_it_is_missing(
        broker: BrokerProcess, tmp_path: Path) -> None:
    produce(broker, "orders", orders(0, 170), PARTITIONS)
    replica = Replica(broker, write_script(tmp_path, PIPELINE), tmp_path / "state", "t-0")
    try:
        wait_caught_up(broker, "tally")
    finally:
        assert replica.stop() == 0, replica.log()
    env = {**python_env(), "RAIL_BROKER": broker.api}

    def rail(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runtime.cli", "streams", *args], env=env,
                              check=False,
                              cwd=ROOT, text=True, capture_output=True, timeout=60)

    got = rail("get", "tally", "counts", "k5")
    assert got.returncode == 0 and json.loads(got.stdout) == 10, got.stderr
    assert json.loads(rail("get", "tally", "last3", "k5").stdout) == [124, 141, 158]
    missing = rail("get", "tally", "counts", "k99")
    assert missing.returncode == 1 and "has no key 'k99'" in missing.stderr
    nope = rail("get", "nosuchapp", "counts", "k1")
    assert nope.returncode == 1 and "no changelog 'nosuchapp.changelog'" in nope.stderr
