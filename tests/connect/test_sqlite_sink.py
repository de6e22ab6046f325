"""The SQLite sink: upserts by key, deletes on tombstones, stores its offsets with the rows,
and sends what it cannot write to the DLQ when errors.tolerance = "all"."""

from __future__ import annotations

import json
import sqlite3

from runtime.client import Producer
from tests.connect.tasks import Task, read_topic
from tests.helpers import wait_for


def rows(path):
    with sqlite3.connect(path) as db:
        try:
            return dict(db.execute("SELECT key, value FROM docs").fetchall())
        except sqlite3.OperationalError:
            return {}


def stored(path):
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT sum(next_offset) FROM rail_connect_offsets").fetchone()[0]
        except sqlite3.OperationalError:
            return None


def test_a_sqlite_sink_upserts_deletes_and_dead_letters_keyless_events(broker, tmp_path):
    db = tmp_path / "docs.db"
    entry = {"name": "docs-out", "kind": "sink", "class": "sqlite", "topics": ["docs"],
             "errors": {"tolerance": "all"}, "linger_ms": 5,
             "config": {"path": str(db), "table": "docs"}}
    with Producer(broker.api) as producer:
        producer.send("docs", {"v": 1}, key="a")
        producer.send("docs", {"v": 1}, key="b")
        producer.send("docs", {"v": 2}, key="a")
        producer.send("docs", {"orphan": True})  # no key: cannot be a row
        producer.send("docs", None, key="b")  # tombstone
    task = Task(entry, broker.api, tmp_path / "sink.log")
    try:
        wait_for(lambda: stored(db) == 5, 20, 0.05, "the first five events")
        assert {k: json.loads(v) for k, v in rows(db).items()} == {"a": {"v": 2}}
        task.stop()
        with Producer(broker.api) as producer:
            producer.send("docs", {"v": 3}, key="b")
        task = Task(entry, broker.api, tmp_path / "sink.log")
        wait_for(lambda: stored(db) == 6, 20, 0.05, "the event sent while it was stopped")
        assert {k: json.loads(v) for k, v in rows(db).items()} == {"a": {"v": 2}, "b": {"v": 3}}
    finally:
        task.stop()
    assert task.proc.returncode == 0, task.log()
    dead = read_topic(broker.api, "docs.dlq")
    assert [e.value for e in dead] == [{"orphan": True}]
    assert "no key" in dead[0].headers["rail.error"]


def test_errors_tolerance_none_stops_the_task_on_a_bad_event(broker, tmp_path):
    entry = {"name": "strict-out", "kind": "sink", "class": "sqlite", "topics": ["strict"],
             "config": {"path": str(tmp_path / "s.db"), "table": "docs"}}
    with Producer(broker.api) as producer:
        producer.send("strict", {"orphan": True})
    task = Task(entry, broker.api, tmp_path / "sink.log")
    try:
        assert task.proc.wait(20) == 1
    finally:
        task.stop()
    assert "no key" in task.log() and 'errors.tolerance = "none"' in task.log()
    assert read_topic(broker.api, "strict.dlq") == []
