"""The batch paths behind the connect speed work, in-process: the sink's one-pass ordering
against the plain per-event definition, the file source's block reads, the record header
that names its partition only when it changes, and the older header."""

from __future__ import annotations

import random

from brokerd import protocol as p
from runtime.client import Event, Producer
from runtime.connect.file_source import READ_BYTES, FileSource
from runtime.connect.offsets import (
    HEADER,
    OFFSETS_TOPIC,
    OLD_HEADER,
    Checkpoint,
    Headers,
    _encode,
    checkpoint_value,
    ours,
    recover,
)
from runtime.connect.sink_task import in_order
from runtime.connection import Connection


def in_order_by_definition(events, floors):
    """Each event at or above its floor, once, in offset order per partition; the next
    offset per partition after them."""
    kept = {(e.topic, e.partition, e.offset): e for e in reversed(events)
            if e.offset >= floors.get((e.topic, e.partition), 0)}
    arrival = [e for e in events if e.offset >= floors.get((e.topic, e.partition), 0)]
    ordered = all(b.offset > a.offset for i, b in enumerate(arrival)
                  for a in arrival[:i] if (a.topic, a.partition) == (b.topic, b.partition))
    out = arrival if ordered else [kept[k] for k in sorted(kept)]
    return out, {(e.topic, e.partition): e.offset + 1 for e in out}


def test_one_pass_ordering_matches_the_definition_on_random_redeliveries():
    rng = random.Random(17)
    for _ in range(2000):
        events = []
        for _ in range(rng.randrange(6)):  # runs of a partition, some delivered again
            topic, part, start = rng.choice("ab"), rng.randrange(2), rng.randrange(10)
            events += [Event(topic, part, o, o) for o in range(start, start + rng.randrange(1, 5))]
        floors = {(t, p): rng.randrange(6) for t in "ab" for p in range(2) if rng.random() < .5}
        got, nexts = in_order(events, floors)
        want, want_nexts = in_order_by_definition(events, floors)
        assert [(e.topic, e.partition, e.offset) for e in got] == \
            [(e.topic, e.partition, e.offset) for e in want], (events, floors)
        assert nexts == want_nexts, (events, floors)


def read_all(path):
    source = FileSource("f", {"path": str(path)})
    source.open({})
    out = []
    for record in source.records():
        if record is None:
            break
        out.append(record)
    source.close()
    return out


def test_block_reads_keep_lines_longer_than_a_block_and_skip_blank_ones(tmp_path):
    path = tmp_path / "in.jsonl"
    long_line = b'{"x": "' + b"y" * (2 * READ_BYTES + 5) + b'"}'
    path.write_bytes(b'{"a": 1}\r\n\n  \n' + long_line + b"\n" + b'{"b": 2}\n{"c": 3')
    records = read_all(path)
    assert [r.value for r in records] == [b'{"a": 1}', long_line, b'{"b": 2}']
    ends = [r.source_offset[1] for r in records]  # the byte position after each line
    assert ends == [10, 14 + len(long_line) + 1, 14 + len(long_line) + 10]


def test_a_header_names_its_partition_only_when_it_changes_and_recovery_follows_it():
    headers = Headers("conn/0", "a")
    values = [headers.value(seq, part, seq * 10) for seq, part in
              ((1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "a"))]
    found = [ours(Event("t", 0, 0, {}, headers={HEADER: v}), "conn/0") for v in values]
    assert found == [(1, None, 10), (2, None, 20), (3, "b", 30), (4, None, 40), (5, "a", 50)]
    assert len(values[0]) < len(values[2])  # the partition's bytes only where it changed
    assert ours(Event("t", 0, 0, {}, headers={HEADER: values[0]}), "conn/1") is None
    old = Event("t", 0, 0, {}, headers={OLD_HEADER: _encode(("conn/0", 7, "in.jsonl", [1, 2]))})
    assert ours(old, "conn/0") == (7, "in.jsonl", [1, 2])
    other = Event("t", 0, 0, {}, headers={HEADER: b"\xc1not msgpack"})
    assert ours(other, "conn/0") is None


def test_recovery_follows_the_partitions_along_the_unbroken_run(broker):
    """Records of source partitions a and b after a checkpoint (whose last record was of
    a, so record 1 names none); record 5 was lost in a kill: the offsets advance over 1-4,
    and 6 is reported stored."""
    conn = Connection(broker.api)
    try:
        conn.call(p.CreateTopic(topic="mixed", partitions=2))
        headers = Headers("mix/0", "a")
        with Producer(broker.api) as producer:
            producer.send(OFFSETS_TOPIC, checkpoint_value(
                Checkpoint(offsets={"a": 5}, seq=0, partition="a")), key="mix/0")
            for seq, part, offset in ((1, "a", 10), (2, "b", 20), (3, "b", 30),
                                      (4, "a", 40), (5, "b", 50), (6, "b", 60)):
                value = headers.value(seq, part, offset)
                if seq != 5:
                    producer.send("mixed", {"seq": seq}, partition=seq % 2,
                                  headers={HEADER: value})
        point, ahead = recover(conn, "mix/0", ["mixed"])
    finally:
        conn.close()
    assert (point.seq, point.offsets, point.partition) == (4, {"a": 40, "b": 30}, "a")
    assert ahead == {6}
