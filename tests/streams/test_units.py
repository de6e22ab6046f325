"""The pure parts of Rail Streams, without processes: ids, batching, windows, local files."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from runtime.streams import Hopping, PipelineError, Session, Tumbling
from runtime.streams.checkpoint import Checkpoint
from runtime.streams.errors import StreamsError
from runtime.streams.localstore import LocalStore, local_file
from runtime.streams.sender import OutBatch, producer_id
from runtime.streams.task import BATCH_BYTES, _fitted


def test_producer_ids_are_the_same_for_the_same_names_and_valid_for_the_broker() -> None:
    first = producer_id("app", "orders", "3")
    assert first == producer_id("app", "orders", "3")
    assert first != producer_id("app", "orders", "4") != producer_id("app", "orders3", "")
    assert 1 <= first < 2**63


def test_a_big_output_batch_is_cut_to_fit_and_keeps_its_order() -> None:
    records = [[b"x" * 100_000, i, None, 0] for i in range(100)]  # ~10 MB
    parts = _fitted(records)
    assert len(parts) > 1 and all(len(encoded) <= BATCH_BYTES for _, encoded in parts)
    assert [r[1] for chunk, _ in parts for r in chunk] == list(range(100))
    assert msgspec.msgpack.decode(parts[0][1])[0][1] == 0


def test_window_starts_and_bad_windows() -> None:
    assert list(Tumbling(10).starts(25)) == [20]
    assert list(Hopping(10, 4).starts(13)) == [4, 8, 12]
    assert list(Hopping(10, 5).starts(3)) == [0]
    with pytest.raises(PipelineError):
        Hopping(10, 20)
    with pytest.raises(PipelineError):
        Tumbling(10, grace_ms=50, retention_ms=20)
    with pytest.raises(PipelineError):
        Session(0)


def test_the_local_file_keeps_state_checkpoint_and_outbox_together(tmp_path: Path) -> None:
    disk = LocalStore(tmp_path / "t.sqlite")
    outbox = [OutBatch("out", 1, 7, 10, 2, b"\x92\x91\x01\x91\x02", probe=True)]
    disk.commit(Checkpoint(commit=3, offset=42), [("s", b"k", b"\x01")], outbox)
    disk.confirm(2, "abc")
    disk.close()
    again = LocalStore(tmp_path / "t.sqlite")
    assert again.checkpoint().offset == 42 and again.get("s", b"k") == b"\x01"
    assert again.outbox() == outbox and again.confirmed() == (2, "abc")
    again.commit(Checkpoint(commit=4, offset=50), [("s", b"k", None)], [])
    assert again.get("s", b"k") is None and again.outbox() == []
    again.close()


def test_local_files_keep_short_names_and_fit_long_ones_under_sqlites_limits(
        tmp_path: Path) -> None:
    assert local_file(tmp_path, "app", "orders", 3) == tmp_path / "app" / "orders-3.sqlite"
    long_ones = {local_file(tmp_path, a * 249, t * 249, part)
                 for a in "ab" for t in "st" for part in (0, 1023)}
    assert len(long_ones) == 8, "distinct names keep distinct files"
    assert all(len(f.name) <= 247 and len(bytes(f)) <= 504 for f in long_ones)
    for f in long_ones:
        LocalStore(f).close()
    with pytest.raises(StreamsError, match="too long a path"):
        local_file(tmp_path / ("d" * 200) / ("d" * 200), "app", "t" * 249, 0)


def test_encoded_runs_join_into_arrays_that_decode_to_the_same_records_in_order() -> None:
    from runtime.streams.task import BATCH_RECORDS, _joined

    sizes = [1, 15, 16, 3, 65_535, 65_536, 2]  # each msgpack array header form, both sides
    runs, want, first = [], [], 0
    for n in sizes:
        records = [[i, f"k{i}", None, i] for i in range(first, first + n)]
        runs.append((n, msgspec.msgpack.encode(records)))
        want += records
        first += n
    joined = _joined(runs)
    got = [r for count, encoded in joined for r in msgspec.msgpack.decode(encoded)]
    assert got == want
    assert all(len(msgspec.msgpack.decode(encoded)) == count for count, encoded in joined)
    # Joined up to BATCH_RECORDS; a run bigger than that alone stays alone.
    assert [count for count, _ in joined] == [1 + 15 + 16 + 3, 65_535, 65_536, 2]
    assert all(count <= BATCH_RECORDS for count, _ in joined[:1])
    small = _joined([(1, msgspec.msgpack.encode([[0]]))] * (BATCH_RECORDS + 1))
    assert [count for count, _ in small] == [BATCH_RECORDS, 1]
