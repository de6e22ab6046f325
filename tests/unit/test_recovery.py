"""Opening a damaged partition: a torn or corrupt tail is cut, a damaged closed segment is
reported (never skipped), missing or bad indexes are rebuilt."""

from __future__ import annotations

import os
import random
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokerd.errors import CorruptLogError
from brokerd.log.config import LogConfig
from brokerd.log.partition import PartitionLog
from tests.log_helpers import Stored, append, copy_dir, log_files, read_all

CONFIG = LogConfig(segment_bytes=2048, index_interval_bytes=256)


def write_log(directory: Path, sizes: list[int], config: LogConfig = CONFIG) -> list[int]:
    """Append one batch per entry of ``sizes`` (its record count); return the batch ends
    as byte positions in the active segment (for cutting), oldest first."""
    log = PartitionLog(directory, config)
    ends: list[int] = []
    for n, count in enumerate(sizes):
        before = len(log.segments)
        append(log, [f"{log.end_offset + i}:".encode() + b"v" * (n % 50) for i in range(count)],
               at=1_000 + n)
        if len(log.segments) != before:
            ends = []
        ends.append(log.segments[-1].size)
    log.close()
    return ends


def reopen(directory: Path, config: LogConfig = CONFIG) -> PartitionLog:
    return PartitionLog(directory, config)


def cut(path: Path, size: int) -> None:
    os.truncate(path, size)


def flip(path: Path, position: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ 0xFF]))


def test_acked_batches_survive_a_cut_at_every_byte_of_the_last_batch(tmp_path: Path) -> None:
    ends = write_log(tmp_path / "orig", [3, 1, 4, 1, 5, 9])
    original = reopen(tmp_path / "orig")
    records = read_all(original)
    original.close()
    last_start, last_end = ends[-2], ends[-1]
    last_base = records[-9].offset
    for size in range(last_start, last_end):
        damaged = copy_dir(tmp_path / "orig", tmp_path / "cut")
        cut(log_files(damaged)[-1], size)
        log = reopen(damaged)
        try:
            assert read_all(log) == records[:-9], f"cut at {size}"
            assert log.recovery.dropped_bytes == size - last_start
            assert log.recovery.dropped_batches == (1 if size > last_start else 0)
            assert append(log, [b"again"]) == last_base
        finally:
            log.close()


def test_a_flipped_byte_in_the_last_batch_drops_only_that_batch(tmp_path: Path) -> None:
    ends = write_log(tmp_path / "orig", [2, 7, 3])
    original = reopen(tmp_path / "orig")
    records = read_all(original)
    original.close()
    rng = random.Random(7)
    header = list(range(ends[-2], ends[-2] + 64))
    positions = header + rng.sample(range(ends[-2] + 64, ends[-1]), 20)
    for position in positions:
        damaged = copy_dir(tmp_path / "orig", tmp_path / "flip")
        flip(log_files(damaged)[-1], position)
        log = reopen(damaged)
        try:
            assert read_all(log) == records[:-3], f"flip at {position}"
            assert log.recovery.dropped_batches == 1
            assert append(log, [b"again"]) == records[-3].offset
        finally:
            log.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=25), data=st.data())
def test_reopening_keeps_exactly_the_batches_before_any_cut(sizes: list[int],
                                                            data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ends = write_log(directory, sizes)
        log = reopen(directory)
        records = read_all(log)
        log.close()
        size = data.draw(st.integers(0, ends[-1]), label="cut at")
        cut(log_files(directory)[-1], size)
        log = reopen(directory)
        try:
            intact = [e for e in ends if e <= size]
            in_active = sizes[len(sizes) - len(ends):]  # record counts of the active batches
            kept = len(records) - sum(in_active) + sum(in_active[:len(intact)])
            assert read_all(log) == records[:kept]
            assert log.recovery.dropped_bytes == size - (intact[-1] if intact else 0)
            assert append(log, [b"next"]) == kept
        finally:
            log.close()


@settings(max_examples=25, deadline=None)
@given(flushed=st.integers(1, 30), unflushed=st.integers(1, 10), data=st.data())
def test_flushed_batches_are_never_lost_when_unflushed_bytes_go(flushed: int, unflushed: int,
                                                                data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = PartitionLog(Path(tmp), CONFIG)
        for n in range(flushed):
            append(log, [b"durable %d" % n] * (n % 3 + 1))
        log.flush()
        durable = read_all(log)
        active, durable_size = log.segments[-1].log_path, log.segments[-1].size
        for n in range(unflushed):
            append(log, [b"volatile %d" % n] * 2)
        end_size = log.segments[-1].size if log.segments[-1].log_path == active else None
        log.close()
        # The disk may keep any prefix of what was written after the last fsync.
        if end_size is not None:
            cut(active, data.draw(st.integers(durable_size, end_size), label="kept bytes"))
        log = reopen(Path(tmp))
        try:
            assert read_all(log)[:len(durable)] == durable
        finally:
            log.close()


def test_a_corrupt_closed_segment_without_index_is_reported_and_reads_reaching_it_raise(
        tmp_path: Path) -> None:
    write_log(tmp_path, [2] * 40)
    log = reopen(tmp_path)
    records = read_all(log)
    second = log.segments[1]
    positions = [pos for pos, _ in second.scan(0, second.base_offset, 0, False, True).headers]
    log.close()
    damaged_batch = len(positions) // 2
    flip(second.log_path, positions[damaged_batch] + 70)
    second.index_path.unlink()

    log = reopen(tmp_path)
    try:
        where = f"{second.log_path} at byte {positions[damaged_batch]}"
        assert len(log.recovery.errors) == 1 and where in log.recovery.errors[0]
        assert second.index_path.name in log.recovery.rebuilt_indexes
        bad_offset = second.base_offset + 2 * damaged_batch
        for offset in (second.base_offset, bad_offset - 1, bad_offset, bad_offset + 1):
            with pytest.raises(CorruptLogError) as raised:
                read_all(log, offset)
            assert raised.value.path == str(second.log_path)
            assert raised.value.position == positions[damaged_batch]
        before = log.read(second.base_offset, 1)
        assert [b.header.base_offset for b in before] == [second.base_offset]
        third = log.segments[2].base_offset
        assert read_all(log, third) == records[third:]
        assert append(log, [b"still appending"]) == len(records)
    finally:
        log.close()
    assert reopen(tmp_path).recovery.errors


def test_a_damaged_length_in_a_closed_segment_raises_instead_of_looping(tmp_path: Path) -> None:
    write_log(tmp_path, [1] * 40)
    first = log_files(tmp_path)[0]
    with open(first, "r+b") as f:
        f.seek(8)
        f.write(struct.pack(">I", first.stat().st_size * 2))
    log = reopen(tmp_path)
    try:
        with pytest.raises(CorruptLogError) as raised:
            log.read(0, 1 << 20)
        assert raised.value.position == 0
    finally:
        log.close()


def test_deleted_index_files_are_rebuilt_the_same_and_reads_stay_correct(tmp_path: Path) -> None:
    write_log(tmp_path, [n % 5 + 1 for n in range(60)])
    log = reopen(tmp_path)
    records = read_all(log)
    indexes = {p.name: p.read_bytes() for p in tmp_path.glob("*.index")}
    log.close()
    assert len(indexes) >= 3
    for name in indexes:
        (tmp_path / name).unlink()
    log = reopen(tmp_path)
    try:
        assert sorted(log.recovery.rebuilt_indexes) == sorted(indexes)
        assert not log.recovery.errors and log.recovery.dropped_bytes == 0
        assert {p.name: p.read_bytes() for p in tmp_path.glob("*.index")} == indexes
        for offset in range(0, len(records), 7):
            assert read_all(log, offset, max_bytes=300)[-1] == records[-1]
            assert log.read(offset, 1)[0].header.base_offset <= offset
        assert read_all(log) == records
    finally:
        log.close()


@pytest.mark.parametrize("damage", [b"\x00" * 5, b"\xff" * 16])
def test_a_garbled_index_file_is_rebuilt(tmp_path: Path, damage: bytes) -> None:
    write_log(tmp_path, [3] * 40)
    log = reopen(tmp_path)
    records = read_all(log)
    index = log.segments[0].index_path
    log.close()
    index.write_bytes(index.read_bytes() + damage)
    log = reopen(tmp_path)
    try:
        assert log.recovery.rebuilt_indexes == [index.name]
        assert read_all(log) == records
    finally:
        log.close()


def test_stray_temporary_files_are_removed_on_open(tmp_path: Path) -> None:
    write_log(tmp_path, [1] * 30)
    strays = [tmp_path / "00000000000000000000.log.cleaned", tmp_path / "x.snapshot.tmp"]
    for stray in strays:
        stray.write_bytes(b"half written")
    log = reopen(tmp_path)
    try:
        assert not any(s.exists() for s in strays)
        assert [r.value for r in read_all(log)][:1] == [b"0:"]
    finally:
        log.close()


def test_an_empty_directory_opens_as_an_empty_log(tmp_path: Path) -> None:
    log = reopen(tmp_path / "new")
    try:
        assert (log.start_offset, log.end_offset) == (0, 0)
        assert log.recovery.clean
    finally:
        log.close()


def test_the_stored_crc_is_zlib_crc32_of_header_bytes_16_on_and_the_payload(
        tmp_path: Path) -> None:
    log = reopen(tmp_path)
    append(log, [b"a" * 300, b"b"], keys=["k", None], timestamps=[5, None], at=9)
    log.close()
    data = log_files(tmp_path)[0].read_bytes()
    (stored,) = struct.unpack_from(">I", data, 12)
    assert stored == zlib.crc32(data[16:])  # the on-disk format, whichever crc32 wrote it


def test_records_keep_their_content_and_timestamps_across_reopen(tmp_path: Path) -> None:
    log = reopen(tmp_path)
    append(log, [b"a", b"b"], keys=["k1", None], timestamps=[5, None], at=9)
    log.close()
    log = reopen(tmp_path)
    try:
        assert read_all(log) == [Stored(0, "k1", b"a", 5), Stored(1, None, b"b", 9)]
    finally:
        log.close()
