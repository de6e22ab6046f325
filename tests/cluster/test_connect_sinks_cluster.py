"""Rail Connect on a cluster beyond the file source (``test_connect_cluster.py``).

The PostgreSQL sink: given the endpoint list, it applies every
change exactly once through a kill -9 of the broker that coordinates its group (and leads
some of its partitions) and a kill -9 of the task itself: the table ends equal to the
topic's latest value per key, and no row was ever written with an older value after a
newer one.  The HTTP source answers 200 only for events that survive a kill -9 of their
leader.  The SQL table source sends each row once through a leader kill and its own.  The
SQLite sink keeps each key's latest value through its coordinator's kill, and the JSONL and
HTTP sinks deliver every event (at least once) through one."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg

from runtime.client import Producer
from runtime.connect.settings import parse
from tests.cluster.client import create_in_sync
from tests.cluster.test_groups_coordinator import find_coordinator
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.connect.postgres import PostgresServer
from tests.connect.tasks import Task, count, read_topic
from tests.connect.test_http_sink import FlakyServer
from tests.connect.test_http_source import listening, post
from tests.connect.test_jsonl_sink import lines
from tests.connect.test_postgres_sink import (
    EVENTS,
    KEYS,
    TOPIC,
    applied,
    check_exactly_once,
    prepare_tables,
    sink_entry,
)
from tests.connect.test_sqlite_sink import rows, stored
from tests.helpers import free_port, wait_for
from tests.integration.wire import RawClient


def test_a_postgres_sink_on_a_cluster_applies_each_change_once_through_coordinator_and_task_kills(
        tmp_path: Path, zookeeper: ZooKeeper, postgres: PostgresServer) -> None:
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        every = ",".join(apis)
        create_in_sync(apis, TOPIC, 3)
        rng = random.Random(7)
        with Producer(every, acks="all") as producer:
            for i in range(EVENTS):
                key = rng.randrange(KEYS)
                value = None if rng.random() < 0.05 else {"id": key, "name": f"n{i}", "qty": i}
                producer.send(TOPIC, value, key=str(key))
            producer.flush(timeout_s=60)
            assert not producer.errors, producer.errors[:3]
        prepare_tables(postgres.dsn)
        entry = sink_entry(postgres.dsn)
        coordinator = apis.index(find_coordinator(apis[0], parse(entry).group)[1])
        task = Task(entry, every, tmp_path / "sink.log")
        try:
            wait_for(lambda: applied(postgres.dsn) > 4_000, 60, 0.01, "4,000 applied")
            brokers[coordinator].kill9()  # its group's coordinator, a partition's leader
            assert applied(postgres.dsn) < EVENTS // 2, "the kill came too late to matter"
            wait_for(lambda: applied(postgres.dsn) > EVENTS // 2, 90, 0.02, "half applied")
            task.kill9()
            assert applied(postgres.dsn) < EVENTS, "the task's kill came too late to matter"
            task = Task(entry, every, tmp_path / "sink.log")
            wait_for(lambda: applied(postgres.dsn) >= EVENTS, 90, 0.1, "every event applied")
        finally:
            task.stop()
        assert task.proc.returncode == 0, task.log()[-3000:]
        check_exactly_once(postgres.dsn, every)
        with RawClient(apis[(coordinator + 1) % 3]) as raw:
            meta = raw.ok("metadata", topics=[TOPIC])
        assert sum(x["end_offset"] for x in meta["topics"][0]["partitions"]) == EVENTS
    finally:
        for b in brokers:
            b.stop()


def test_an_http_source_on_a_cluster_answers_200_only_for_what_survives_a_leader_kill(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """A client posts numbered events, retrying each answered 503 until it gets a 200;
    the leader of the topic is killed with kill -9 on the way.  Every event answered 200
    is in the topic (acks "all": on every replica in sync before the answer), and only
    an event answered 503 at least once may be there twice (a 503 may have been stored)."""
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        every = ",".join(apis)
        leader = create_in_sync(apis, "web")[0]
        port = free_port()
        url = f"http://127.0.0.1:{port}/events"
        entry = {"name": "web-in", "kind": "source", "class": "http", "topics": ["web"],
                 "config": {"listen": f"127.0.0.1:{port}", "timeout_s": 2}}
        task = Task(entry, every, tmp_path / "http.log")
        refused: set[int] = set()
        try:
            wait_for(lambda: listening(url), 30, 0.1, "the HTTP source to listen")
            for n in range(600):
                if n == 200:
                    brokers[leader].kill9()
                while True:
                    status, _ = post(url, json.dumps([{"n": n, "i": i} for i in range(5)])
                                     .encode())
                    if status == 200:
                        break
                    assert status == 503, status
                    refused.add(n)
            assert refused, "the kill came too late to matter"
        finally:
            task.stop()
        assert task.proc.returncode == 0, task.log()[-3000:]
        stored = Counter((e.value["n"], e.value["i"]) for e in read_topic(every, "web"))
        assert set(stored) == {(n, i) for n in range(600) for i in range(5)}
        twice = {n for (n, _i), times in stored.items() if times > 1}
        assert twice <= refused, sorted(twice - refused)[:10]
    finally:
        for b in brokers:
            b.stop()


def test_a_table_source_on_a_cluster_sends_each_row_once_through_leader_and_task_kills(
        tmp_path: Path, zookeeper: ZooKeeper, postgres: PostgresServer) -> None:
    """The SQL table poller (PostgreSQL, incrementing id) on a cluster, given the endpoint
    list, while writers keep inserting rows (their commits out of id order): the leader of
    its topic is killed with kill -9, then the task itself.  Every row is in the topic
    exactly once (the source sends with acks "all" on a cluster, its offsets in the
    replicated ``_connect-offsets``), and the task says which acks it used."""
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        every = ",".join(apis)
        leader = create_in_sync(apis, "rows")[0]
        with psycopg.connect(postgres.dsn, autocommit=True) as db:
            db.execute("DROP TABLE IF EXISTS cluster_rows")
            db.execute("CREATE TABLE cluster_rows (id BIGSERIAL PRIMARY KEY, payload TEXT)")
        stop = threading.Event()

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            with psycopg.connect(postgres.dsn) as db:
                while not stop.is_set():
                    for _ in range(rng.randint(1, 3)):
                        db.execute("INSERT INTO cluster_rows (payload) VALUES (%s)", (f"w{seed}",))
                    stop.wait(rng.random() * 0.01)
                    db.commit()

        writers = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(3)]
        entry = {"name": "rows-in", "kind": "source", "class": "table", "topics": ["rows"],
                 "config": {"dsn": postgres.dsn, "table": "cluster_rows"}}
        task = Task(entry, every, tmp_path / "table.log")
        try:
            for w in writers:
                w.start()
            wait_for(lambda: count(every, "rows") > 300, 60, 0.05, "rows before the kill")
            brokers[leader].kill9()
            sent = count(every, "rows")
            wait_for(lambda: count(every, "rows") > sent + 300, 60, 0.1,
                     "rows through the new leader")
            task.kill9()
            task = Task(entry, every, tmp_path / "table.log")
            wait_for(lambda: task.log().count("resumes at") >= 2 or
                     task.proc.poll() is not None, 30, 0.1, "the task again")
            time.sleep(1.0)
            stop.set()
            for w in writers:
                w.join(30)
            with psycopg.connect(postgres.dsn) as db:
                ids = sorted(r[0] for r in db.execute("SELECT id FROM cluster_rows"))
            wait_for(lambda: count(every, "rows") >= len(ids), 60, 0.1, "every row")
            time.sleep(0.5)  # a row sent twice would land now
        finally:
            stop.set()
            task.stop()
        assert task.proc.returncode == 0, task.log()[-3000:]
        assert "acks all" in task.log(), task.log()[-3000:]
        got = sorted(e.value["id"] for e in read_topic(every, "rows"))
        assert got == ids, (len(got), len(ids), sorted((Counter(got) - Counter(ids)).items())[:5])
    finally:
        for b in brokers:
            b.stop()


def test_a_sqlite_sink_on_a_cluster_keeps_the_latest_value_per_key_through_a_coordinator_kill(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The SQLite sink (its offsets in the database, with the rows) given the endpoint list:
    the broker that coordinates its group (and leads a partition) is killed with kill -9
    mid-stream.  Every event is applied (the offsets it stored sum to the topic's), the
    table holds each key's latest value, and the keyless events reach the DLQ, which
    the sink writes with acks "all" on a cluster."""
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        every = ",".join(apis)
        create_in_sync(apis, "docs", 3)
        latest: dict[str, int] = {}
        with Producer(every) as producer:
            for i in range(6_000):
                if i % 1_000 == 500:
                    producer.send("docs", {"orphan": i})  # no key: cannot be a row
                key = f"k{i % 97}"
                producer.send("docs", {"v": i}, key=key)
                latest[key] = i
            producer.flush(timeout_s=60)
            assert not producer.errors, producer.errors[:3]
        db = tmp_path / "docs.db"
        entry = {"name": "docs-out", "kind": "sink", "class": "sqlite", "topics": ["docs"],
                 "errors": {"tolerance": "all"}, "batch": 50, "linger_ms": 5,
                 "config": {"path": str(db), "table": "docs"}}
        coordinator = apis.index(find_coordinator(apis[0], parse(entry).group)[1])
        task = Task(entry, every, tmp_path / "sqlite.log")
        try:
            wait_for(lambda: (stored(db) or 0) > 1_000, 60, 0.01, "1,000 applied")
            brokers[coordinator].kill9()
            assert (stored(db) or 0) < 6_006, "the kill came too late to matter"
            wait_for(lambda: stored(db) == 6_006, 90, 0.1, "every event applied")
        finally:
            task.stop()
        assert task.proc.returncode == 0, task.log()[-3000:]
        assert {k: json.loads(v) for k, v in rows(db).items()} == \
            {k: {"v": v} for k, v in latest.items()}
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 97
        dead = {e.value["orphan"] for e in read_topic(every, "docs.dlq")}
        assert dead == {i for i in range(6_000) if i % 1_000 == 500}
    finally:
        for b in brokers:
            b.stop()


def test_jsonl_and_http_sinks_on_a_cluster_deliver_everything_through_a_coordinator_kill(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The JSONL and HTTP sinks (at least once, docs/connect.md) read one topic on a
    cluster, each in its group; the broker that coordinates the HTTP sink's group is
    killed with kill -9 mid-stream, while the HTTP server fails half its requests.  Every
    event ends in the file, every event but the poison ones reaches the server, and the
    poison ones reach the DLQ."""
    brokers = start_three(tmp_path, zookeeper)
    server = FlakyServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        apis = [b.api for b in brokers]
        every = ",".join(apis)
        create_in_sync(apis, "feed", 3)
        total = 3_000
        poison = set(range(11, total, 97))
        with Producer(every) as producer:
            for i in range(total):
                producer.send("feed", {"i": i, "poison": i in poison}, key=f"k{i}")
            producer.flush(timeout_s=60)
            assert not producer.errors, producer.errors[:3]
        folder = tmp_path / "out"
        to_file = {"name": "to-file", "kind": "sink", "class": "jsonl", "topics": ["feed"],
                   "batch": 100, "linger_ms": 5, "config": {"path": str(folder / "out.jsonl")}}
        hook = {"name": "hook", "kind": "sink", "class": "http", "topics": ["feed"],
                "batch": 50, "linger_ms": 5, "errors": {"tolerance": "all"},
                "config": {"url": f"http://127.0.0.1:{server.server_port}/in", "retries": 50,
                           "backoff_ms": 1, "max_backoff_ms": 20}}
        coordinator = apis.index(find_coordinator(apis[0], parse(hook).group)[1])
        tasks = [Task(to_file, every, tmp_path / "file.log"), Task(hook, every, tmp_path / "hook.log")]

        def delivered() -> int:
            with server.lock:
                return len({v["i"] for v in server.received})
        try:
            wait_for(lambda: delivered() > 300, 60, 0.01, "300 delivered")
            brokers[coordinator].kill9()
            assert delivered() < total - len(poison), "the kill came too late to matter"
            wait_for(lambda: delivered() >= total - len(poison)
                     and len({v["i"] for v in lines(folder)}) >= total, 120, 0.2,
                     "every event delivered and written")
            wait_for(lambda: {e.value["i"] for e in read_topic(every, "feed.dlq")} >= poison,
                     60, 0.2, "the poison ones dead-lettered")
        finally:
            for task in tasks:
                task.stop()
        for task in tasks:
            assert task.proc.returncode == 0, task.log()[-3000:]
        with server.lock:
            assert {v["i"] for v in server.received} == set(range(total)) - poison
        assert {v["i"] for v in lines(folder)} == set(range(total))
        assert {e.value["i"] for e in read_topic(every, "feed.dlq")} == poison
    finally:
        server.shutdown()
        server.server_close()
        for b in brokers:
            b.stop()
