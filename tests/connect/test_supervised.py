"""Connectors declared in rail.toml run under rail up; rail connect lists, pauses, resumes
and restarts them.  A file source feeds a SQLite sink end to end."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.connect.tasks import write_lines
from tests.helpers import wait_for
from tests.integration.test_supervisor import Rail

CONNECTORS = """
[[connectors]]
name = "orders-in"
kind = "source"
class = "file"
topics = ["orders"]
transforms = [{type = "key", field = "id"}, {type = "mask", fields = ["name"]}]
config = {path = "orders.jsonl"}

[[connectors]]
name = "orders-db"
kind = "sink"
class = "sqlite"
topics = ["orders"]
linger_ms = 5
config = {path = "orders.db", table = "orders"}
"""


@pytest.fixture
def rail(tmp_path: Path) -> Iterator[Rail]:
    r = Rail(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def rows(path: Path) -> dict[str, dict]:
    try:
        with sqlite3.connect(path) as db:
            return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM orders")}
    except sqlite3.OperationalError:
        return {}


def connect(rail: Rail, *args: str):
    done = rail.rail("connect", *args, "-c", str(rail.folder / "rail.toml"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stdout


def test_connectors_in_rail_toml_run_supervised_and_rail_connect_drives_them(rail: Rail):
    rail.write_toml(CONNECTORS)
    write_lines(rail.folder / "orders.jsonl", 0, 100, "w")
    rail.up()
    db = rail.folder / "orders.db"
    wait_for(lambda: len(rows(db)) == 100, 30, 0.1, "the source's lines in the sink's table")
    assert rows(db)["7"] == {"id": 7, "name": "****"}

    def listed() -> dict[str, dict]:
        return {r["name"]: r for r in json.loads(connect(rail, "list", "--json"))}

    # a source's count comes with its task's next health report (one a second)
    rows_now = wait_for(lambda: (r := listed())["orders-in"]["processed"] == 100 and r, 10,
                        0.2, "the source's count")
    assert (rows_now["orders-in"]["kind"], rows_now["orders-db"]["class"]) == ("source",
                                                                               "sqlite")
    assert rows_now["orders-in"]["state"] == "running"
    assert rows_now["orders-db"]["processed"] == 100

    connect(rail, "pause", "orders-in")
    wait_for(lambda: not rail.worker("orders-in")["pids"], 20, 0.1, "the paused task to stop")
    write_lines(rail.folder / "orders.jsonl", 100, 150)
    assert "paused" in connect(rail, "status", "orders-in")
    assert len(rows(db)) == 100
    connect(rail, "resume", "orders-in")
    wait_for(lambda: len(rows(db)) == 150, 30, 0.1, "the lines written while paused")

    pid = rail.worker("orders-db")["pids"][0]
    connect(rail, "restart", "orders-db")
    wait_for(lambda: (rail.worker("orders-db")["pids"] or [pid])[0] != pid, 20, 0.1,
             "the sink to restart")
    write_lines(rail.folder / "orders.jsonl", 150, 160)
    wait_for(lambda: len(rows(db)) == 160, 30, 0.1, "lines after the restart")
    status = connect(rail, "status", "orders-in")
    assert "offset orders.jsonl" in status, status
    missing = rail.rail("connect", "pause", "nope", "-c", str(rail.folder / "rail.toml"))
    assert missing.returncode == 1 and "no connector named 'nope'" in missing.stderr
