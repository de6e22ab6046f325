"""The stateless chain over consumer batches (runtime/streams/chain.py), in-process on a real
broker: outputs and dead letters in input order, every operator called once per record that
reaches it, records delivered again skipped, the broker's timestamp where a record has none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.connection import Connection
from runtime.consumer import Batch
from runtime.streams import Pipeline
from runtime.streams.sender import Sender
from runtime.streams.task import Task
from tests.helpers import BrokerProcess
from tests.streams.harness import read


class Order(msgspec.Struct):
    n: int


def test_a_chain_over_batches_sends_what_event_by_event_processing_sends(
        broker: BrokerProcess, tmp_path: Path) -> None:
    calls: dict[str, list[int]] = {"keep": [], "price": []}

    def keep(order: Order) -> bool:
        calls["keep"].append(order.n)
        if order.n % 11 == 0:
            raise ValueError("no keep")
        return order.n % 3 != 0

    def price(order: Order) -> dict[str, int]:
        calls["price"].append(order.n)
        if order.n % 7 == 0:
            raise ValueError("no price")
        return {"n": order.n, "price": order.n * 2}

    app = Pipeline("chain1", source="orders", value_type=Order, state_dir=tmp_path)
    app.stream.filter(keep).map(price).to("out")
    app.freeze()
    values: list[Any] = [{"n": i} if i % 50 != 17 else {"n": "x"} for i in range(300)]
    stamps = [None if i % 4 == 0 else 1_000 + i for i in range(300)]
    records = [p.WireRecord(v, f"k{i % 5}", None, ts) for i, (v, ts) in enumerate(zip(values, stamps))]
    # Cut anyhow, with records delivered again (120..149) and a batch past the next offset.
    cuts = [(0, 100), (100, 150), (120, 200), (260, 300), (200, 300)]
    conn = Connection(broker.api)
    try:
        for topic in ("orders", "out", "orders.dlq"):
            conn.call(p.CreateTopic(topic=topic, exist_ok=True))
        conn.call(p.CreateTopic(topic="chain1.changelog", config={"cleanup_policy": "compact"},
                                exist_ok=True))
        task = Task(app, "orders", 0, conn, Sender(conn), {"out": 1, "orders.dlq": 1}, tmp_path)
        task.restore()
        assert task.takes_batches
        for start, end in cuts:
            task.process_batch(Batch("orders", 0, start, 777, records[start:end]))
            task.commit()
            task.settle()
        assert task.offset == 300
        out, dlq = read(broker, "out"), read(broker, "orders.dlq")
        task.close()
    finally:
        conn.close()
    decoded = [i for i in range(300) if i % 50 != 17]
    kept = [i for i in decoded if i % 11 and i % 3]
    want = [i for i in kept if i % 7]
    assert [(e.key, e.value, e.timestamp) for e in out] == \
        [(f"k{i % 5}", {"n": i, "price": i * 2}, 777 if i % 4 == 0 else 1_000 + i) for i in want]
    assert calls == {"keep": decoded, "price": kept}
    # Per batch, after its outputs, in input order: batch by batch, the input order.
    failed = [i for i in range(300) if i % 50 == 17 or i % 11 == 0 or i in kept and i % 7 == 0]
    assert [e.value for e in dlq] == [values[i] for i in failed]
    assert [e.headers["rail.source.offset"] for e in dlq] == [str(i) for i in failed]
    assert all(e.headers["rail.error"].startswith(("ValidationError", "ValueError"))
               for e in dlq)
