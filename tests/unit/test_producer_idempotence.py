"""Idempotent producers: retries are answered with the original offset, gaps refused, and
the state outlives a reopen and a segment roll."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from brokerd.errors import OutOfOrderSequence
from brokerd.log.config import LogConfig
from brokerd.log.partition import PartitionLog
from brokerd.log.producers import WINDOW, DuplicateBatch
from tests.log_helpers import append, read_all

CONFIG = LogConfig(segment_bytes=1024)
PID = 42


def send(log: PartitionLog, sequence: int, count: int = 2, pid: int = PID) -> int:
    values = [b"p%d-s%d" % (pid, sequence + i) + b"." * 80 for i in range(count)]
    return append(log, values, producer_id=pid, base_sequence=sequence)


def assert_nothing_written(log: PartitionLog, action: Callable[[], None]) -> None:
    """Run ``action`` and check the log neither grew nor moved its end offset."""
    before = (log.end_offset, log.size_bytes)
    action()
    assert (log.end_offset, log.size_bytes) == before


@pytest.fixture
def log(tmp_path: Path) -> Iterator[PartitionLog]:
    plog = PartitionLog(tmp_path, CONFIG)
    yield plog
    plog.close()


def test_a_retried_batch_raises_duplicate_batch_with_its_original_offset(
        log: PartitionLog) -> None:
    first = send(log, 0)
    send(log, 2)

    def retry() -> None:
        with pytest.raises(DuplicateBatch) as dup:
            send(log, 0)
        assert dup.value.base_offset == first

    assert_nothing_written(log, retry)


def test_a_sequence_gap_raises_out_of_order_sequence_and_writes_nothing(
        log: PartitionLog) -> None:
    send(log, 0)

    def skip() -> None:
        with pytest.raises(OutOfOrderSequence, match="2 expected"):
            send(log, 5)

    assert_nothing_written(log, skip)
    assert send(log, 2) == 2


def test_a_retry_older_than_the_window_is_still_refused(log: PartitionLog) -> None:
    for n in range(WINDOW + 2):
        send(log, 2 * n)
    with pytest.raises(DuplicateBatch) as dup:
        send(log, 0)
    assert dup.value.base_offset is None
    with pytest.raises(DuplicateBatch) as dup:
        send(log, 4)
    assert dup.value.base_offset == 4


def test_producers_are_tracked_independently(log: PartitionLog) -> None:
    send(log, 0, pid=1)
    assert send(log, 0, pid=2) == 2
    assert send(log, 2, pid=1) == 4
    with pytest.raises(DuplicateBatch):
        send(log, 0, pid=2)
    assert append(log, [b"not idempotent"]) == 6
    assert append(log, [b"not idempotent"]) == 7


def test_producer_state_survives_close_and_reopen(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    offsets = [send(log, 0), send(log, 2)]
    log.close()
    log = PartitionLog(tmp_path, CONFIG)
    try:
        for sequence, offset in zip((0, 2), offsets):
            with pytest.raises(DuplicateBatch) as dup:
                send(log, sequence)
            assert dup.value.base_offset == offset
        with pytest.raises(OutOfOrderSequence):
            send(log, 9)
        assert send(log, 4) == 4
    finally:
        log.close()


def test_producer_state_survives_a_segment_roll_and_reopen(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    first = send(log, 0)
    while len(log.segments) < 3:  # push the producer's batch into a closed segment
        append(log, [b"filler" * 20])
    assert list(tmp_path.glob("*.snapshot"))
    log.close()
    log = PartitionLog(tmp_path, CONFIG)
    try:
        def retry() -> None:
            with pytest.raises(DuplicateBatch) as dup:
                send(log, 0)
            assert dup.value.base_offset == first

        assert_nothing_written(log, retry)
        end = log.end_offset
        assert send(log, 2) == end
        sent = [r.offset for r in read_all(log) if r.value.startswith(b"p42")]
        assert sent == [0, 1, end, end + 1]
    finally:
        log.close()


def test_a_torn_retry_is_accepted_again_after_recovery(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    send(log, 0)
    second = send(log, 2)
    log.close()
    active = sorted(tmp_path.glob("*.log"))[-1]
    with open(active, "r+b") as f:  # the second batch never reached the disk whole
        f.truncate(active.stat().st_size - 10)
    log = PartitionLog(tmp_path, CONFIG)
    try:
        assert log.recovery.dropped_batches == 1
        assert send(log, 2) == second
    finally:
        log.close()


def test_an_unknown_producer_must_start_at_sequence_0() -> None:
    """A lost first batch must not let a later one in, or its retry would be taken for a
    duplicate and never stored (acknowledged, yet lost)."""
    from brokerd.errors import OutOfOrderSequence
    from brokerd.log.producers import ProducerTable
    table = ProducerTable()
    with pytest.raises(OutOfOrderSequence):
        table.check(9, 2, 1)
    table.check(9, 0, 2)
    table.record(9, 0, 2, 0)
    table.check(9, 2, 1)
