"""A stream joined with a table read from its own topic (differently partitioned), under
kill -9 and lost local files: every order priced once, with the menu it was read against."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from runtime.connection import Connection
from runtime.streams import query
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

PIPELINE = """
app = Pipeline("bill", source="orders")
menu = app.table("menu", store="menu")
(app.stream.key_by(lambda o: o["dish"])
    .join(menu, lambda o, price: {"order": o["order"], "total": o["qty"] * price})
    .to("bills"))
app.stream.key_by(lambda o: o["dish"]).join(menu, lambda o, p: p, left=True).to("asked")
run_hosted = app.run_hosted
"""
DISHES = ["margherita", "diavola", "carbonara", "tiramisu", "water"]


def orders(start: int, count: int) -> list[tuple[str, dict, int]]:
    return [(f"o{i}", {"order": i, "dish": DISHES[i % 5], "qty": 1 + i % 3}, i)
            for i in range(start, start + count)]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_stream_joined_with_a_table_topic_is_exact_after_kill_9(
        broker: BrokerProcess, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    script = write_script(tmp_path, PIPELINE)
    state = tmp_path / "state"
    v1 = {"margherita": 8, "diavola": 10, "carbonara": 12, "tiramisu": 6}  # no water yet
    v2 = {"margherita": 9, "water": 2, "tiramisu": None}  # tiramisu off the menu
    phases = [(orders(0, 1600), v1), (orders(1600, 1600), {**v1, **v2})]
    mid_stream = 0
    produce(broker, "orders", [], 3)
    for number, (items, _menu) in enumerate(phases):
        # the menu is in the table before the phase's orders come (a join takes the table
        # as it stands when a record comes, so the reference needs that order)
        produce(broker, "menu", [(d, p, 0) for d, p in (v1 if number == 0 else v2).items()], 2)
        replica = Replica(broker, script, state, "j-0")
        try:
            wait_caught_up(broker, "bill")
        finally:
            assert replica.stop() == 0, replica.log()
        for i in range(0, len(items), CHUNK):
            mid_stream += run_and_kill(broker, script, state, "j-0", "bill", items[i:i + CHUNK],
                                       3, pause(rng, i, len(items), mid_stream))
            if rng.random() < 0.3:
                shutil.rmtree(state, ignore_errors=True)
        replica = Replica(broker, script, state, "j-0")
        try:
            wait_caught_up(broker, "bill")  # the next phase's menu comes after these orders
        finally:
            assert replica.stop() == 0, replica.log()
    assert mid_stream > 0
    want_bills: Counter = Counter()
    want_asked: Counter = Counter()
    for items, menu in phases:
        for _, o, _ in items:
            price = menu.get(o["dish"])
            want_asked[(o["dish"], price)] += 1
            if price is not None:
                want_bills[(o["order"], o["qty"] * price)] += 1
    assert Counter((e.value["order"], e.value["total"]) for e in read(broker, "bills")) == \
        want_bills
    assert Counter((e.key, e.value) for e in read(broker, "asked")) == want_asked
    conn = Connection(broker.api)
    try:
        final = {d: p for d, p in {**v1, **v2}.items() if p is not None}
        assert dict(query.decoded(query.table(conn, "bill", "menu"))) == final
    finally:
        conn.close()
