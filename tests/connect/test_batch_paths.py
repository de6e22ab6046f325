"""The batch paths behind the connect speed work, in-process: the sink's one-pass ordering
against the plain per-event definition, the file source's block reads, the short record
header and the old four-field one."""

from __future__ import annotations

import random

from runtime.client import Event
from runtime.connect.file_source import READ_BYTES, FileSource
from runtime.connect.offsets import HEADER, _encode, ours, record_headers
from runtime.connect.sink_task import in_order


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


def test_a_record_header_names_its_task_and_sequence_and_old_headers_still_count():
    event = Event("t", 0, 0, {}, headers=record_headers("conn/0", 41))
    assert ours(event, "conn/0") == 41
    assert ours(event, "conn/1") is None
    old = Event("t", 0, 0, {}, headers={HEADER: _encode(("conn/0", 7, "in.jsonl", [1, 2]))})
    assert ours(old, "conn/0") == 7
    other = Event("t", 0, 0, {}, headers={HEADER: b"\xc1not msgpack"})
    assert ours(other, "conn/0") is None
