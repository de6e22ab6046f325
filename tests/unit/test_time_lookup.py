"""offset_for_time: the first offset whose timestamp is >= T, checked against a brute force."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from brokerd.log.config import LogConfig
from brokerd.log.partition import PartitionLog
from tests.log_helpers import Stored, append, read_all

CONFIG = LogConfig(segment_bytes=1024, index_interval_bytes=100)


def first_at_or_after(records: list[Stored], timestamp: int) -> int | None:
    return next((r.offset for r in records if r.timestamp >= timestamp), None)


def test_offset_for_time_finds_the_first_record_at_or_after_t(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    try:
        for n in range(100):
            append(log, [b"r" * 40] * 3, timestamps=[10 * n, 10 * n + 3, 10 * n + 6], at=10 * n + 9)
        assert len(log.segments) > 3
        assert log.offset_for_time(0) == 0
        assert log.offset_for_time(-5) == 0
        assert log.offset_for_time(4) == 2
        assert log.offset_for_time(7) == 3
        assert log.offset_for_time(503) == 151
        assert log.offset_for_time(996) == 299
        assert log.offset_for_time(997) is None
    finally:
        log.close()


def test_a_record_without_timestamp_counts_as_appended_at_the_batch_append_time(
        tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    try:
        append(log, [b"a", b"b"], timestamps=[100, None], at=500)
        append(log, [b"c"], timestamps=[300], at=600)
        assert log.offset_for_time(101) == 1
        assert log.offset_for_time(300) == 1
        assert log.offset_for_time(501) is None
    finally:
        log.close()


def test_out_of_order_timestamps_give_the_first_offset_not_the_smallest_time(
        tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    try:
        append(log, [b"a", b"b", b"c"], timestamps=[50, 900, 10], at=1_000)
        append(log, [b"d"], timestamps=[60], at=1_000)
        assert log.offset_for_time(55) == 1
        assert log.offset_for_time(20) == 0
    finally:
        log.close()


@settings(max_examples=30, deadline=None)
@given(stamps=st.lists(st.lists(st.one_of(st.none(), st.integers(0, 5_000)), min_size=1,
                                max_size=8), min_size=1, max_size=60),
       probes=st.lists(st.integers(-10, 5_100), min_size=1, max_size=15))
def test_offset_for_time_agrees_with_a_scan_before_and_after_reopen(
        stamps: list[list[int | None]], probes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = PartitionLog(Path(tmp), CONFIG)
        for n, batch in enumerate(stamps):
            append(log, [b"x" * 30] * len(batch), timestamps=batch, at=n * 80)
        records = read_all(log)
        for probe in probes:
            assert log.offset_for_time(probe) == first_at_or_after(records, probe), probe
        log.close()
        log = PartitionLog(Path(tmp), CONFIG)
        try:
            for probe in probes:
                assert log.offset_for_time(probe) == first_at_or_after(records, probe), probe
        finally:
            log.close()
