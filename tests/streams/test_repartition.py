"""Re-keying through a repartition topic and a stream-table join, under kill -9 and lost
local files: tables and joined outputs equal the reference exactly."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from runtime.connection import Connection
from runtime.streams import Pipeline, PipelineError, query
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
from tests.streams.test_stateless import SEEDS

PARTITIONS = 3
PIPELINE = """
app = Pipeline("shop", source="orders")
app.stream.group_by(lambda v: v["station"]).count("per-station")
by_customer = app.stream.key_by(lambda v: v["customer"]).repartition()
spent = by_customer.group_by().sum("spent", lambda v: v["amount"])
(by_customer.join(spent, lambda v, total: {"order": v["order"], "total": total})
    .to("enriched"))
run_hosted = app.run_hosted
"""


def orders(count: int) -> list[tuple[str, dict, int]]:
    return [(f"o{i}", {"order": i, "station": f"s{i % 4}", "customer": f"c{i % 7}",
                       "amount": i % 10}, i) for i in range(count)]


@pytest.mark.parametrize("seed", SEEDS)
def test_tables_after_a_repartition_and_a_join_are_exact_after_kill_9(
        broker: BrokerProcess, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    script = write_script(tmp_path, PIPELINE)
    items = orders(3200)
    mid_stream = 0
    for i in range(0, len(items), CHUNK):
        mid_stream += run_and_kill(broker, script, tmp_path / "state", "r-0", "shop",
                                   items[i:i + CHUNK], PARTITIONS,
                                   pause(rng, i, len(items), mid_stream))
        if rng.random() < 0.3:
            shutil.rmtree(tmp_path / "state", ignore_errors=True)
    replica = Replica(broker, script, tmp_path / "state", "r-0")
    try:
        wait_caught_up(broker, "shop")
    finally:
        assert replica.stop() == 0, replica.log()
    stations = Counter(v["station"] for _, v, _ in items)
    spent: Counter = Counter()
    enriched: Counter = Counter()
    for _, v, _ in items:  # one customer's orders keep their order through the repartition
        spent[v["customer"]] += v["amount"]
    conn = Connection(broker.api)
    try:
        assert dict(query.decoded(query.table(conn, "shop", "per-station"))) == dict(stations)
        assert dict(query.decoded(query.table(conn, "shop", "spent"))) == dict(spent)
    finally:
        conn.close()
    running: Counter = Counter()
    for _, v, _ in items:
        running[v["customer"]] += v["amount"]
        enriched[(v["customer"], v["order"])] += 1
    got = read(broker, "enriched")
    assert Counter((e.key, e.value["order"]) for e in got) == enriched
    # each customer's running totals arrive in order, exactly once each
    for customer in spent:
        totals = [e.value["total"] for e in got if e.key == customer]
        assert totals == sorted(totals) and totals[-1] == spent[customer]


def test_a_join_with_a_table_of_other_tasks_is_refused_when_defined() -> None:
    app = Pipeline("bad", source="orders")
    table = app.stream.group_by(lambda v: v["station"]).count("per-station")
    with pytest.raises(PipelineError, match="keyed like the table"):
        app.stream.join(table, lambda v, t: v)
