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
        assert task.ck.stream_time == 1_299  # the latest of the records that decode
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


def test_a_task_with_a_backlog_commits_per_cycle_not_per_poll_and_catches_up_exactly(
        broker: BrokerProcess, tmp_path: Path, monkeypatch: Any) -> None:
    """While its partition holds more than a poll brings, a task commits every CYCLE_EVENTS
    only (not at the end of each poll); the rest at the end of the poll that reached the
    end."""
    import logging
    import threading

    from runtime.consumer import Consumer
    from runtime.streams import runner as runner_module
    from runtime.worker import Hosted, Options
    from tests.helpers import wait_for
    from tests.streams.harness import lag, produce

    polls: list[int] = []
    commits: list[int] = []  # events in each commit

    class SmallPolls(Consumer):  # a stored batch (~1,000 records) a reply: many polls
        def __init__(self, broker: str, **kwargs: Any) -> None:
            super().__init__(broker, max_bytes=1_000, **kwargs)

        def poll_batches(self, timeout_s: float = 1.0) -> list[Batch]:
            got = super().poll_batches(timeout_s)
            if got:
                polls.append(sum(len(b.records) for b in got))
            return got

    real_commit = Task.commit

    def commit(task: Task) -> bool:
        count = task.processed_since_commit
        if real_commit(task):
            commits.append(count)
            return True
        return False

    monkeypatch.setattr(runner_module, "Consumer", SmallPolls)
    monkeypatch.setattr(runner_module, "CYCLE_EVENTS", 2_500)
    monkeypatch.setattr(Task, "commit", commit)
    produce(broker, "orders", [(f"k{i % 7}", {"n": i}, 1_000 + i) for i in range(3_500)], 1)
    app = Pipeline("backlog", source="orders", state_dir=tmp_path)
    app.stream.filter(lambda v: v["n"] % 2 == 0).map(lambda v: v["n"]).to("evens")
    host = Hosted(Options(broker=broker.api, group="backlog", topics=["orders"],
                          name="backlog", member_id="backlog-0"), logging.getLogger("test"))
    runner = runner_module.Runner(app, host)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: lag(broker, "backlog") == 0, 30, what="the group to catch up")
    finally:
        host.stopping = True
        thread.join(10)
    assert not thread.is_alive()
    assert len(polls) >= 3, polls  # else this proves nothing
    # A commit at the end of each poll would make one per poll (about 1,000 events each).
    assert sum(commits) == 3_500 and all(c >= 2_500 for c in commits[:-1]), (commits, polls)
    assert [(e.key, e.value) for e in read(broker, "evens")] == \
        [(f"k{i % 7}", i) for i in range(0, 3_500, 2)]
