"""Stateless operators under kill -9: the output topics equal the offline reference exactly."""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BrokerProcess
from tests.streams.harness import (
    CHUNK,
    Replica,
    pause,
    read,
    run_and_kill,
    wait_caught_up,
    write_script,
)

SEEDS = [int(s) for s in os.environ.get("RAIL_STREAMS_SEEDS", "1,2").split(",")]
PARTITIONS = 3

PIPELINE = """
def tripled(v):
    return {"n": v["n"], "x3": v["n"] * 3}

def copies(v):
    return [v, {**v, "copy": 1}] if v["n"] % 5 == 0 else [v]

app = Pipeline("stateless", source="orders")
even, odd = (app.stream.filter(lambda v: v["n"] % 7 != 0).map(tripled).flat_map(copies)
             .branch(lambda v: v["n"] % 2 == 0, lambda v: True))
even.to("even")
odd.key_by(lambda v: v["n"] % 4).to("odd")
run_hosted = app.run_hosted
"""


def reference(items: list[tuple[str, dict, int]]) -> tuple[Counter, Counter]:
    even: Counter = Counter()
    odd: Counter = Counter()
    for key, v, _ in items:
        if v["n"] % 7 == 0:
            continue
        out = {"n": v["n"], "x3": v["n"] * 3}
        for item in ([out, {**out, "copy": 1}] if v["n"] % 5 == 0 else [out]):
            if item["n"] % 2 == 0:
                even[(key, repr(item))] += 1
            else:
                odd[(item["n"] % 4, repr(item))] += 1
    return even, odd


def outputs(broker: BrokerProcess, topic: str) -> Counter:
    return Counter((e.key, repr(e.value)) for e in read(broker, topic))


@pytest.mark.parametrize("seed", SEEDS)
def test_stateless_outputs_are_exact_after_kill_9_at_random_points(
        broker: BrokerProcess, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    script = write_script(tmp_path, PIPELINE)
    items = [(f"k{i % 13}", {"n": i}, 1_000 + i) for i in range(4000)]
    mid_stream = 0
    for i in range(0, len(items), CHUNK):
        mid_stream += run_and_kill(broker, script, tmp_path / "state", "s-0", "stateless",
                                   items[i:i + CHUNK], PARTITIONS, pause(rng, i, len(items), mid_stream))
    assert mid_stream > 0, "no kill landed mid-stream: the test proves nothing"
    replica = Replica(broker, script, tmp_path / "state", "s-0")
    try:
        wait_caught_up(broker, "stateless")
    finally:
        assert replica.stop() == 0, replica.log()
    even, odd = reference(items)
    assert outputs(broker, "even") == even
    assert outputs(broker, "odd") == odd


# A chain without branches or state: the task runs it over whole batches
# (runtime/streams/chain.py), dead letters included.
CHAIN = """
import msgspec

class Order(msgspec.Struct):
    n: int

def priced(order):
    if order.n % 89 == 0:
        raise ValueError("no price")
    return {"n": order.n, "price": order.n * 2}

app = Pipeline("chain", source="orders", value_type=Order)
app.stream.filter(lambda o: o.n % 3 != 0).map(priced).to("priced")
run_hosted = app.run_hosted
"""


@pytest.mark.parametrize("seed", SEEDS)
def test_a_chain_run_over_whole_batches_is_exact_after_kill_9(
        broker: BrokerProcess, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    script = write_script(tmp_path, CHAIN)
    items: list[tuple[str, dict[str, Any], int]] = [
        (f"k{i % 13}", {"n": i}, 1_000 + i) for i in range(4000)]
    for i in rng.sample(range(4000), 15):
        items[i] = (items[i][0], {"n": str(i)}, items[i][2])  # does not decode
    mid_stream = 0
    for i in range(0, len(items), CHUNK):
        mid_stream += run_and_kill(broker, script, tmp_path / "state", "c-0", "chain",
                                   items[i:i + CHUNK], PARTITIONS,
                                   pause(rng, i, len(items), mid_stream))
        if rng.random() < 0.3:
            shutil.rmtree(tmp_path / "state", ignore_errors=True)  # restore from changelog
    assert mid_stream > 0, "no kill landed mid-stream: the test proves nothing"
    replica = Replica(broker, script, tmp_path / "state", "c-0")
    try:
        wait_caught_up(broker, "chain")
    finally:
        assert replica.stop() == 0, replica.log()
    decoded = [(k, v["n"]) for k, v, _ in items if isinstance(v["n"], int)]
    assert outputs(broker, "priced") == Counter(
        (k, repr({"n": n, "price": n * 2})) for k, n in decoded if n % 3 and n % 89)
    letters = Counter(repr(e.value) for e in read(broker, "orders.dlq"))
    assert letters == Counter(repr(v) for _k, v, _ in items
                              if not isinstance(v["n"], int) or v["n"] % 89 == 0 and v["n"] % 3)
