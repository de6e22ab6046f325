"""The sink's wire path (records as the consumer took them off the wire, no Event each)
against the event path it replaces: the same records in the same order with the same next
offsets, the same last value per key, and, on a real PostgreSQL, a batch mixing plain rows
with records that need the event path applied exactly as the events say."""

from __future__ import annotations

import random

import psycopg

from brokerd import protocol as p
from runtime.client import Producer
from runtime.connect.postgres_sink import PostgresSink
from runtime.connect.sink_task import batches_in_order, chunks, in_order, plain
from runtime.consumer import Batch, events_of_batches
from tests.connect.tasks import Task, read_topic
from tests.helpers import wait_for


def random_batches(rng: random.Random) -> list[Batch]:
    """Runs of two topics' partitions, some delivered again (as after a rejoin)."""
    out = []
    for _ in range(rng.randrange(7)):
        topic, part, start = rng.choice("ab"), rng.randrange(2), rng.randrange(12)
        keys = [rng.choice([b"1", "1", 2, "2", "x"]) for _ in range(rng.randrange(1, 5))]
        out.append(Batch(topic, part, start, 0,
                         [p.WireRecord(None if rng.random() < .2 else {"v": start + i}, k)
                          for i, k in enumerate(keys)]))
    return out


def offsets(events):
    return [(e.topic, e.partition, e.offset, e.value) for e in events]


def test_batches_in_order_is_in_order_or_hands_over_to_it():
    rng = random.Random(5)
    handed = 0
    for _ in range(3000):
        batches = random_batches(rng)
        floors = {(t, n): rng.randrange(8) for t in "ab" for n in range(2) if rng.random() < .5}
        want, want_next = in_order(events_of_batches(batches), floors)
        got = batches_in_order(batches, floors)
        if got is None:  # a partition delivered again: the event path sorts it out
            handed += 1
            ends: dict = {}
            overlap = False
            for b in batches:
                tp = (b.topic, b.partition)
                overlap = overlap or b.base_offset < ends.get(tp, 0)
                ends[tp] = max(ends.get(tp, 0), b.base_offset + len(b.records))
            assert overlap, batches
            continue
        fresh, nexts = got
        assert offsets(events_of_batches(fresh)) == offsets(want), (batches, floors)
        assert nexts == want_next, (batches, floors)
    assert 0 < handed < 3000


def test_chunks_keep_every_record_in_order_and_no_more_than_the_size_together():
    rng = random.Random(9)
    for _ in range(500):
        batches = [Batch("t", 0, start, 0, [p.WireRecord(i, 1) for i in range(n)])
                   for start, n in ((rng.randrange(100) * 100, rng.randrange(1, 30))
                                    for _ in range(rng.randrange(6)))]
        size = rng.randrange(1, 25)
        groups = chunks(batches, size)
        assert all(0 < sum(len(b.records) for b in g) <= size for g in groups)
        assert offsets(events_of_batches([b for g in groups for b in g])) == \
            offsets(events_of_batches(batches))


def test_last_values_are_last_events_without_the_events():
    rng = random.Random(3)
    for _ in range(2000):
        batches = random_batches(rng)
        ordered = batches_in_order(batches, {})
        if ordered is None:
            continue
        fresh = ordered[0]
        stored = {(t, n): rng.randrange(10) for t in "ab" for n in range(2) if rng.random() < .5}
        want = PostgresSink.last_events(PostgresSink.__new__(PostgresSink),
                                        events_of_batches(fresh), stored)
        got = PostgresSink.last_values(fresh, stored)
        assert got == {k: e.value for k, e in want.items()}, (fresh, stored)
        assert list(got) == list(want)  # the same order of keys, so the same rows


def test_plain_wants_a_key_and_a_map_or_nothing():
    def one(value, key):
        return plain([Batch("t", 0, 0, 0, [p.WireRecord({"a": 1}, 1), p.WireRecord(value, key)])])
    assert one({"a": 2}, b"k") and one(None, "k")
    assert not one({"a": 2}, None) and not one(b"{}", "k") and not one([1], "k")


def test_a_batch_mixing_rows_and_records_for_the_event_path_is_applied_as_the_events_say(
        broker, postgres, tmp_path):
    # Keyless events (their key is the value's id field), raw JSON text to convert and
    # tombstones among keyed maps: each chunk with such a record goes the event path,
    # the others the wire path; the table ends as the topic's last value per key.
    with psycopg.connect(postgres.dsn, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS mixed, rail_connect_offsets")
        db.execute("CREATE TABLE mixed (id INT PRIMARY KEY, qty INT)")
    rng = random.Random(11)
    want: dict[int, int] = {}
    with Producer(broker.api) as producer:
        for i in range(6000):
            key = rng.randrange(300)
            kind = rng.random()
            if kind < 0.05:
                producer.send("mixed", None, key=str(key))
                want.pop(key, None)
                continue
            if kind < 0.051:  # one chunk (500) in three has neither of these two kinds
                # No key: the id field, an int, among keys "5": one row (runtime.connect.
                # sql_sink.mixed); the batch failed and its task restarted into it again.
                producer.send("mixed", {"id": key, "qty": i})
            elif kind < 0.052:
                producer.send("mixed", b'{"id": %d, "qty": %d}' % (key, i), key=str(key))
            else:
                producer.send("mixed", {"id": key, "qty": i}, key=str(key))
            want[key] = i
    entry = {"name": "mixed-out", "kind": "sink", "class": "postgres", "topics": ["mixed"],
             "batch": 500, "linger_ms": 5,
             "config": {"dsn": postgres.dsn, "table": "mixed", "key_column": "id",
                        "columns": ["id", "qty"]}}
    task = Task(entry, broker.api, tmp_path / "sink.log")
    try:
        def stored() -> int:
            with psycopg.connect(postgres.dsn) as db:
                try:
                    row = db.execute("SELECT coalesce(sum(next_offset), 0) FROM "
                                     "rail_connect_offsets").fetchone()
                except psycopg.errors.UndefinedTable:  # the sink makes it as it starts
                    return 0
            return int(row[0]) if row else 0
        wait_for(lambda: stored() == 6000, 30, 0.1, "every event applied")
    finally:
        task.stop()
    assert task.proc.returncode == 0, task.log()
    with psycopg.connect(postgres.dsn) as db:
        table = dict(db.execute("SELECT id, qty FROM mixed").fetchall())
    assert table == want
    assert not read_topic(broker.api, "mixed.dlq")


def test_rows_fill_the_columns_with_the_key_and_nested_cells_as_json():
    sink = PostgresSink.__new__(PostgresSink)
    sink.document, sink.columns, sink.key_index = False, ["name", "id", "tags"], 1
    changes = [("1", {"id": 9, "name": "a"}), ("2", None), ("3", {"tags": ["x"], "id": 3})]
    assert sink.rows(changes) == [["a", "1", None], [None, "3", '["x"]']]
    assert sink.rows(changes[:1]) == [["a", "1", None]]
    sink.document, sink.columns, sink.key_index = True, ["key", "value"], 0
    assert sink.rows(changes) == [["1", '{"id": 9, "name": "a"}'], ["3", '{"tags": ["x"], "id": 3}']]
