"""PartitionLog: appends across segment rolls, reads from any offset, range errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from brokerd.errors import MessageTooLarge, OffsetOutOfRange
from brokerd.log.batch import HEADER_SIZE
from brokerd.log.config import MAX_SEGMENT_BYTES, LogConfig
from brokerd.log.index import ENTRY, OffsetIndex
from brokerd.log.partition import PartitionLog
from tests.log_helpers import Stored, append, batch_payload, log_files, read_all

TINY = LogConfig(segment_bytes=1024, index_interval_bytes=200)


def value_for(offset: int) -> bytes:
    """A value of varying length that names its own offset."""
    return f"record {offset} ".encode() + b"x" * (offset * 7 % 90)


def fill(log: PartitionLog, batches: int) -> list[Stored]:
    """Append ``batches`` batches of 1 to 6 records; return what a reader should see."""
    expected: list[Stored] = []
    for n in range(batches):
        count = n % 6 + 1
        start = log.end_offset
        values = [value_for(start + i) for i in range(count)]
        at = 10_000 + n
        assert append(log, values, at=at) == start
        expected += [Stored(start + i, None, v, at) for i, v in enumerate(values)]
    return expected


@pytest.fixture
def log(tmp_path: Path) -> Iterator[PartitionLog]:
    plog = PartitionLog(tmp_path / "p0", TINY)
    yield plog
    plog.close()


def test_many_batches_round_trip_across_several_segment_rolls(log: PartitionLog) -> None:
    expected = fill(log, 120)
    assert len(log.segments) >= 5
    assert read_all(log) == expected
    assert log.end_offset == expected[-1].offset + 1


def test_a_reopened_log_reads_the_same_records_and_appends_after_them(tmp_path: Path) -> None:
    first = PartitionLog(tmp_path, TINY)
    expected = fill(first, 60)
    first.close()
    reopened = PartitionLog(tmp_path, TINY)
    try:
        assert reopened.recovery.clean
        assert read_all(reopened) == expected
        assert append(reopened, [b"next"]) == expected[-1].offset + 1
    finally:
        reopened.close()


def test_segment_files_are_named_by_their_twenty_digit_base_offset(log: PartitionLog) -> None:
    fill(log, 40)
    names = [p.name for p in log_files(log.directory)]
    assert names == [f"{s.base_offset:020d}.log" for s in log.segments]
    closed = [s.index_path.name for s in log.segments[:-1]]
    assert all((log.directory / name).exists() for name in closed)


def test_a_read_from_every_offset_starts_with_the_batch_holding_it(log: PartitionLog) -> None:
    expected = fill(log, 50)
    for offset in range(log.start_offset, log.end_offset):
        first = log.read(offset, 1)[0].header
        assert first.base_offset <= offset < first.next_offset
        got = read_all(log, offset)
        assert got == expected[first.base_offset:]


def test_a_read_at_the_end_offset_returns_nothing(log: PartitionLog) -> None:
    assert log.read(0, 1 << 20) == []
    fill(log, 30)
    assert log.read(log.end_offset, 1 << 20) == []


def test_a_read_past_the_end_offset_raises_offset_out_of_range(log: PartitionLog) -> None:
    fill(log, 5)
    with pytest.raises(OffsetOutOfRange, match=rf"\[0, {log.end_offset}\]"):
        log.read(log.end_offset + 1, 1024)


def test_a_read_returns_whole_batches_up_to_about_max_bytes(log: PartitionLog) -> None:
    fill(log, 60)
    for max_bytes in (1, 100, 500, 3000):
        batches = log.read(0, max_bytes)
        sizes = [HEADER_SIZE + len(b.payload) for b in batches]
        assert batches and sum(sizes[:-1]) < max_bytes
        offsets = [b.header.base_offset for b in batches]
        assert offsets == sorted(offsets) and offsets[0] == 0


def batches_of(log: PartitionLog, offset: int, max_bytes: int) -> list[tuple[object, bytes]]:
    return [(b.header, bytes(b.payload)) for b in log.read(offset, max_bytes)]


def test_reads_served_from_the_in_memory_tail_equal_reads_from_the_file(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=1 << 20, index_interval_bytes=200)
    live = PartitionLog(tmp_path / "p0", config)
    try:
        fill(live, 100)  # more batches than the tail keeps: reads cross from file to memory
        reopened = PartitionLog(tmp_path / "p0", config)  # no tail: every read is a pread
        try:
            for offset in range(0, live.end_offset, 3):
                for max_bytes in (1, 150, 700, 1 << 20):
                    from_memory = batches_of(live, offset, max_bytes)
                    from_file = batches_of(reopened, offset, max_bytes)
                    # The same batches; a file read may stop one batch earlier, where the
                    # budget runs out inside the bytes it read.
                    assert from_file and from_file == from_memory[:len(from_file)]
                    assert len(from_memory) - len(from_file) <= (max_bytes < 1 << 20)
                    assert sum(HEADER_SIZE + len(p) for _, p in from_memory[:-1]) < max_bytes
        finally:
            reopened.close()
        live.segments[-1].truncate(0)  # recovery cuts the file: the tail must go with it
        assert live.segments[-1].read(0, 1 << 20, verify=False) == []
    finally:
        live.close()


def test_a_batch_larger_than_max_bytes_is_still_returned_whole(log: PartitionLog) -> None:
    big = [b"y" * 600]
    append(log, [b"small"])
    base = append(log, big)
    batches = log.read(base, 10)
    assert len(batches) == 1 and batches[0].header.base_offset == base
    assert read_all(log, base, max_bytes=10)[0].value == big[0]


def test_a_read_does_not_skip_a_batch_that_does_not_fit_into_the_next_segment(
        tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, LogConfig(segment_bytes=300_000))
    try:
        append(log, [b"small"])
        append(log, [b"B" * 200_000])
        while len(log.segments) < 2:
            append(log, [b"c" * 1000])
        append(log, [b"in the next segment"])
        offsets = [b.header.base_offset for b in log.read(0, 50_000)]
        assert offsets == list(range(len(offsets)))
        assert [r.offset for r in read_all(log, 0, max_bytes=50_000)] == list(
            range(log.end_offset))
    finally:
        log.close()


@pytest.mark.parametrize("max_bytes", [1, 700, 5_000, 40_000, 1 << 20])
def test_reads_of_any_size_see_every_record_once_with_mixed_batch_sizes(
        tmp_path: Path, max_bytes: int) -> None:
    log = PartitionLog(tmp_path, LogConfig(segment_bytes=64 * 1024, index_interval_bytes=512))
    try:
        for n in range(150):
            size = 30_000 if n % 17 == 3 else n * 37 % 900
            append(log, [b"%d:" % n + b"v" * size] * (n % 3 + 1))
        assert len(log.segments) > 4
        got = read_all(log, max_bytes=max_bytes)
        assert [r.offset for r in got] == list(range(log.end_offset))
    finally:
        log.close()


def test_a_segment_rolls_when_it_is_older_than_segment_ms(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, LogConfig(segment_ms=1_000))
    try:
        append(log, [b"a"], at=5_000)
        append(log, [b"b"], at=5_999)
        assert len(log.segments) == 1
        append(log, [b"c"], at=6_000)
        assert [s.base_offset for s in log.segments] == [0, 2]
    finally:
        log.close()


def test_a_batch_over_max_batch_bytes_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, LogConfig(max_batch_bytes=1024))
    try:
        append(log, [b"ok"])
        size = log.size_bytes
        payload = batch_payload([b"z" * 2000])
        with pytest.raises(MessageTooLarge):
            log.append(payload, 1, 1, 1)
        assert (log.size_bytes, log.end_offset) == (size, 1)
    finally:
        log.close()
    reopened = PartitionLog(tmp_path, LogConfig(max_batch_bytes=1024))
    try:
        assert reopened.recovery.clean and reopened.end_offset == 1
    finally:
        reopened.close()


def test_a_segment_size_the_index_cannot_address_is_refused() -> None:
    assert "segment_bytes" in (LogConfig(segment_bytes=2**32).problem() or "")
    assert LogConfig(segment_bytes=MAX_SEGMENT_BYTES).problem() is None
    index = OffsetIndex(0, 1)
    index.maybe_add(7, MAX_SEGMENT_BYTES - 100, 100, 0)
    assert ENTRY.unpack(index.to_bytes()) == (7, MAX_SEGMENT_BYTES - 100, 0)


def test_an_append_needs_a_flush_and_a_flush_clears_it(log: PartitionLog) -> None:
    assert not log.needs_flush
    append(log, [b"a"])
    assert log.needs_flush
    ticket = log.begin_flush()
    assert ticket.end_offset == 1 and not log.needs_flush
    ticket.run()
    append(log, [b"b"])
    log.flush()
    assert not log.needs_flush
