"""The SQL table poller misses no row while rows are inserted concurrently (PostgreSQL,
commits out of id order), and follows updates in timestamp mode (SQLite)."""

from __future__ import annotations

import random
import sqlite3
import threading
import time

import psycopg

from tests.connect.tasks import Task, count, read_topic
from tests.helpers import wait_for

WRITERS, TRANSACTIONS = 4, 120


def insert_concurrently(dsn: str, stop: threading.Event) -> None:
    """Writers that take ids, dawdle, then commit: later ids often commit first."""
    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(dsn) as db:
            for _ in range(TRANSACTIONS):
                if stop.is_set():
                    return
                for _ in range(rng.randint(1, 3)):
                    db.execute("INSERT INTO events (payload) VALUES (%s)", (f"w{seed}",))
                time.sleep(rng.random() * 0.004)
                db.commit()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_a_table_poller_misses_no_row_inserted_while_it_reads(broker, postgres, tmp_path):
    with psycopg.connect(postgres.dsn, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS events")
        db.execute("CREATE TABLE events (id BIGSERIAL PRIMARY KEY, payload TEXT, "
                   "at TIMESTAMPTZ DEFAULT now())")
    entry = {"name": "events-in", "kind": "source", "class": "table", "topics": ["events"],
             "config": {"dsn": postgres.dsn, "table": "events"}}
    task = Task(entry, broker.api, tmp_path / "poller.log")
    stop = threading.Event()
    try:
        insert_concurrently(postgres.dsn, stop)
        with psycopg.connect(postgres.dsn) as db:
            ids = sorted(r[0] for r in db.execute("SELECT id FROM events"))
        wait_for(lambda: count(broker.api, "events") >= len(ids), 30, 0.1, "every row")
        time.sleep(0.3)  # a row sent twice would land now
    finally:
        stop.set()
        task.stop()
    assert task.proc.returncode == 0, task.log()
    events = read_topic(broker.api, "events")
    assert sorted(e.value["id"] for e in events) == ids
    assert events[0].key == str(events[0].value["id"]) and "T" in events[0].value["at"]


def test_timestamp_mode_sends_new_and_updated_rows_in_order(broker, tmp_path):
    path = tmp_path / "shop.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, updated_at INTEGER)")
    db.executemany("INSERT INTO items VALUES (?, ?, ?)", [(1, "a", 10), (2, "b", 10),
                                                         (3, "c", 11)])
    entry = {"name": "items-in", "kind": "source", "class": "table", "topics": ["items"],
             "config": {"path": str(path), "table": "items", "mode": "timestamp",
                        "column": "updated_at"}}
    task = Task(entry, broker.api, tmp_path / "poller.log")
    try:
        wait_for(lambda: count(broker.api, "items") == 3, 20, 0.05, "the first rows")
        db.execute("UPDATE items SET name = 'a2', updated_at = 12 WHERE id = 1")
        wait_for(lambda: count(broker.api, "items") == 4, 20, 0.05, "the updated row")
        task.stop()
        db.execute("INSERT INTO items VALUES (4, 'd', 12)")
        task = Task(entry, broker.api, tmp_path / "poller.log")
        wait_for(lambda: count(broker.api, "items") == 5, 20, 0.05, "the row added while down")
        time.sleep(0.3)
    finally:
        task.stop()
        db.close()
    assert [(e.key, e.value["name"]) for e in read_topic(broker.api, "items")] == [
        ("1", "a"), ("2", "b"), ("3", "c"), ("1", "a2"), ("4", "d")]
