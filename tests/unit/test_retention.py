"""Retention: whole old segments go by size or by age; the active one never does."""

from __future__ import annotations

from pathlib import Path

import pytest

from brokerd.errors import OffsetOutOfRange
from brokerd.log.config import LogConfig
from brokerd.log.partition import PartitionLog
from tests.log_helpers import append, log_files, read_all

SEGMENT = 1024
VALUE = b"v" * 200  # with framing, four one-record batches fill a 1024-byte segment


def fill(log: PartitionLog, segments: int, first_at: int = 0, step: int = 1_000) -> None:
    """Append one-record batches until ``segments`` closed segments exist; batch n is
    appended at ``first_at + n * step`` (ms)."""
    n = 0
    while len(log.segments) <= segments:
        append(log, [VALUE], at=first_at + n * step)
        n += 1


def open_log(directory: Path, retention_bytes: int = -1, retention_ms: int = -1) -> PartitionLog:
    return PartitionLog(directory, LogConfig(segment_bytes=SEGMENT, retention_bytes=retention_bytes,
                                             retention_ms=retention_ms))


def test_retention_by_size_deletes_the_oldest_segments_while_the_rest_is_big_enough(
        tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_bytes=2500)
    try:
        fill(log, 6)
        sizes = [s.size for s in log.segments]
        records = read_all(log)
        deleted = log.enforce_retention(now=10**12)
        kept = [s.size for s in log.segments]
        assert deleted == len(sizes) - len(kept) > 0
        assert sum(kept) >= 2500 > sum(kept) - kept[0]
        assert read_all(log) == records[log.start_offset:]
        assert len(log_files(tmp_path)) == len(kept)
    finally:
        log.close()


def test_retention_by_age_deletes_segments_whose_newest_record_is_too_old(
        tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_ms=10_000)
    try:
        fill(log, 5, first_at=100_000, step=1_000)
        newest = [s.max_timestamp for s in log.segments]
        assert log.enforce_retention(now=newest[0] + 10_000) == 0  # exactly at the limit
        assert log.enforce_retention(now=newest[0] + 10_001) == 1
        assert log.enforce_retention(now=newest[2] + 10_001) == 2
        assert log.segments[0].max_timestamp == newest[3]
    finally:
        log.close()


def test_retention_never_deletes_the_active_segment(tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_ms=1, retention_bytes=0)
    try:
        fill(log, 3)
        active = log.segments[-1]
        log.enforce_retention(now=10**12)
        assert log.segments == [active]
        assert log.start_offset == active.base_offset
        assert append(log, [b"more"], at=10**12) == log.end_offset - 1
    finally:
        log.close()


def test_minus_one_keeps_everything(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    try:
        fill(log, 4)
        assert log.enforce_retention(now=10**15) == 0
        assert log.start_offset == 0
    finally:
        log.close()


def test_a_read_below_the_start_offset_after_retention_raises_offset_out_of_range(
        tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_ms=10)
    try:
        fill(log, 3)
        log.enforce_retention(now=10**12)
        start = log.start_offset
        assert start > 0
        with pytest.raises(OffsetOutOfRange, match=rf"offset {start - 1} is outside .*\[{start}, "):
            log.read(start - 1, 1024)
        assert log.read(start, 1)[0].header.base_offset == start
    finally:
        log.close()


def test_retention_survives_a_reopen(tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_bytes=2000)
    fill(log, 5)
    log.enforce_retention(now=0)
    log.flush()
    start, end, records = log.start_offset, log.end_offset, read_all(log)
    log.close()
    log = open_log(tmp_path)
    try:
        assert (log.start_offset, log.end_offset) == (start, end)
        assert log.recovery.clean
        assert read_all(log) == records
    finally:
        log.close()
