"""The PostgreSQL sink against a real server: killed with kill -9 mid-stream and restarted,
the table equals the topic's latest value per key, and no change was ever applied twice."""

from __future__ import annotations

import random

import psycopg

from brokerd import protocol as p
from runtime.client import Producer
from runtime.connection import Connection
from tests.connect.tasks import Task, read_topic
from tests.helpers import wait_for

TOPIC, EVENTS, KEYS = "orders", 40_000, 2_000


def produce_orders(broker: str) -> None:
    """Upserts and some tombstones over KEYS keys; ``qty`` grows with every event, so a
    key's successive writes must have growing ``qty``."""
    conn = Connection(broker)
    conn.call(p.CreateTopic(topic=TOPIC, partitions=3))
    conn.close()
    rng = random.Random(7)
    with Producer(broker) as producer:
        for i in range(EVENTS):
            key = rng.randrange(KEYS)
            value = None if rng.random() < 0.05 else {"id": key, "name": f"n{i}", "qty": i}
            producer.send(TOPIC, value, key=str(key))


def latest_per_key(broker: str) -> dict[int, tuple[str, int]]:
    table: dict[int, tuple[str, int]] = {}
    for e in sorted(read_topic(broker, TOPIC), key=lambda e: (e.partition, e.offset)):
        if e.value is None:
            table.pop(int(e.key), None)
        else:
            table[int(e.key)] = (e.value["name"], e.value["qty"])
    return table


def prepare_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS orders, history, rail_connect_offsets")
        db.execute("CREATE TABLE orders (id INT PRIMARY KEY, name TEXT, qty INT)")
        # every write a row gets, in order: a change applied twice shows as a qty that
        # does not grow
        db.execute("CREATE TABLE history (n BIGSERIAL PRIMARY KEY, id INT, qty INT)")
        db.execute("CREATE OR REPLACE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   "BEGIN INSERT INTO history (id, qty) VALUES (NEW.id, NEW.qty); "
                   "RETURN NEW; END $$")
        db.execute("CREATE TRIGGER log_write AFTER INSERT OR UPDATE ON orders "
                   "FOR EACH ROW EXECUTE FUNCTION log_write()")


def applied(dsn: str) -> int:
    """Events the sink applied, by the offsets it stored (0 before it made its table)."""
    with psycopg.connect(dsn) as db:
        try:
            row = db.execute("SELECT coalesce(sum(next_offset), 0) FROM rail_connect_offsets "
                             "WHERE connector = 'orders-out'").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def sink_entry(dsn: str, tasks: int = 1) -> dict:
    return {"name": "orders-out", "kind": "sink", "class": "postgres", "topics": [TOPIC],
            "batch": 50, "linger_ms": 5, "tasks": tasks,
            "config": {"dsn": dsn, "table": "orders", "key_column": "id",
                       "columns": ["id", "name", "qty"]}}


def check_exactly_once(dsn: str, broker: str) -> None:
    """The table is the topic's latest value per key, and each key's writes grew."""
    with psycopg.connect(dsn) as db:
        rows = db.execute("SELECT id, name, qty FROM orders").fetchall()
        history = db.execute("SELECT id, qty FROM history ORDER BY n").fetchall()
    assert {r[0]: (r[1], r[2]) for r in rows} == latest_per_key(broker)
    last: dict[int, int] = {}
    for key, qty in history:
        assert qty > last.get(key, -1), f"key {key}: qty {qty} written after {last[key]}"
        last[key] = qty


def test_a_postgres_sink_killed_mid_batch_applies_every_change_exactly_once(
        broker, postgres, tmp_path):
    prepare_tables(postgres.dsn)
    produce_orders(broker.api)
    entry = sink_entry(postgres.dsn)
    task = Task(entry, broker.api, tmp_path / "sink.log")
    try:
        for at in (2_000, 8_000, 20_000):
            wait_for(lambda at=at: applied(postgres.dsn) > at, 60, 0.01, f"{at} applied")
            task.kill9()
            assert applied(postgres.dsn) < EVENTS, "the kill came too late to matter"
            task = Task(entry, broker.api, tmp_path / "sink.log")
        wait_for(lambda: applied(postgres.dsn) >= EVENTS, 60, 0.1, "every event applied")
    finally:
        task.stop()
    assert task.proc.returncode == 0, task.log()
    check_exactly_once(postgres.dsn, broker.api)


def test_two_sink_tasks_rebalancing_mid_stream_apply_every_change_exactly_once(
        broker, postgres, tmp_path):
    """A task joining or leaving moves partitions while the other may be applying a batch
    of one of them: the offsets row locked in the transaction keeps it from applying twice."""
    prepare_tables(postgres.dsn)
    produce_orders(broker.api)
    entry = sink_entry(postgres.dsn, tasks=2)
    first = Task(entry, broker.api, tmp_path / "sink0.log", index=0)
    second = None
    try:
        for at in (2_000, 10_000, 20_000):
            wait_for(lambda at=at: applied(postgres.dsn) > at, 60, 0.01, f"{at} applied")
            if second is None:
                second = Task(entry, broker.api, tmp_path / "sink1.log", index=1)
            else:
                second.stop()
                assert second.proc.returncode == 0, second.log()
                second = None
        assert applied(postgres.dsn) < EVENTS, "the rebalances came too late to matter"
        wait_for(lambda: applied(postgres.dsn) >= EVENTS, 60, 0.1, "every event applied")
    finally:
        for task in (first, second):
            if task is not None:
                task.stop()
    assert first.proc.returncode == 0, first.log()
    check_exactly_once(postgres.dsn, broker.api)


def test_events_postgres_refuses_go_to_the_dlq_and_the_rest_of_their_batch_is_applied(
        broker, postgres, tmp_path):
    with psycopg.connect(postgres.dsn, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS stock, rail_connect_offsets")
        db.execute("CREATE TABLE stock (id INT PRIMARY KEY, qty INT NOT NULL)")
    with Producer(broker.api) as producer:
        for i in range(20):
            qty = "lots" if i == 5 else None if i == 13 else i  # a bad int, a NULL
            producer.send("stock", {"id": i, "qty": qty}, key=str(i))
    entry = {"name": "stock-out", "kind": "sink", "class": "postgres", "topics": ["stock"],
             "errors": {"tolerance": "all"}, "linger_ms": 5,
             "config": {"dsn": postgres.dsn, "table": "stock", "key_column": "id",
                        "columns": ["id", "qty"]}}
    task = Task(entry, broker.api, tmp_path / "sink.log")
    try:
        wait_for(lambda: len(read_topic(broker.api, "stock.dlq")) == 2, 20, 0.05,
                 "the two refused events in the DLQ")
    finally:
        task.stop()
    assert task.proc.returncode == 0, task.log()
    with psycopg.connect(postgres.dsn) as db:
        ids = [r[0] for r in db.execute("SELECT id FROM stock ORDER BY id")]
        stored = db.execute("SELECT next_offset FROM rail_connect_offsets").fetchone()
    assert ids == [i for i in range(20) if i not in (5, 13)] and stored == (20,)
    errors = {e.value["id"]: e.headers["rail.error"] for e in read_topic(broker.api, "stock.dlq")}
    assert "InvalidTextRepresentation" in errors[5] and "NotNullViolation" in errors[13]
