"""The compaction cleaner, checked record by record against a model of what must survive."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from brokerd.log.compaction import clean
from brokerd.log.config import DAY_MS, LogConfig
from brokerd.log.partition import PartitionLog
from tests.log_helpers import Stored, append, read_all

CONFIG = LogConfig(segment_bytes=1024, index_interval_bytes=128, cleanup_policy="compact",
                   delete_retention_ms=DAY_MS)

Batch = list[tuple[str | None, bytes | None]]  # (key, value); a None value is a tombstone


def write(log: PartitionLog, batches: list[Batch], first_at: int = 0) -> None:
    for n, batch in enumerate(batches):
        append(log, [v for _, v in batch], keys=[k for k, _ in batch], at=first_at + n)


def survivors(records: list[Stored], active_base: int, now: int) -> list[Stored]:
    """What clean(now) must leave: in closed segments, the latest record of each key (a
    tombstone only while younger than delete_retention_ms) and every keyless record."""
    latest = {r.key: r.offset for r in records if r.key is not None}
    horizon = now - CONFIG.delete_retention_ms

    def kept(r: Stored) -> bool:
        if r.offset >= active_base or r.key is None:
            return True
        return latest[r.key] == r.offset and not (r.value is None and r.timestamp < horizon)

    return [r for r in records if kept(r)]


def random_batches(rng: random.Random, count: int) -> list[Batch]:
    keys = ["a", "b", "c", "d", "e", None]
    return [
        [(key := rng.choice(keys), None if key and rng.random() < 0.15 else
          b"%d" % rng.randrange(10**6) + b"." * rng.randrange(60))
         for _ in range(rng.randint(1, 4))]
        for _ in range(count)
    ]


def test_clean_keeps_the_latest_record_per_key_at_its_original_offset(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    try:
        write(log, random_batches(random.Random(1), 150))
        records, end = read_all(log), log.end_offset
        expected = survivors(records, log.segments[-1].base_offset, now=10)
        report = clean(log, now=10)
        assert report.records_dropped == len(records) - len(expected) > 0
        assert report.bytes_after < report.bytes_before
        assert read_all(log) == expected
        assert log.end_offset == end
        assert append(log, [b"after"], keys=["a"]) == end
    finally:
        log.close()


def test_clean_stops_at_the_high_watermark(tmp_path: Path) -> None:
    """A replica's cleaner: what lies at or past its high watermark is kept, and a record
    below it is dropped only for a newer one below it too (one past it may still be cut
    by a failover, and the older one, acknowledged, must then be there)."""
    log = PartitionLog(tmp_path, CONFIG)
    try:
        write(log, random_batches(random.Random(5), 150))
        records = read_all(log)
        hw = log.segments[len(log.segments) // 2].base_offset + 1
        log.high_watermark = hw
        below = [r for r in records if r.offset < hw]
        kept_below = survivors(below, active_base=hw, now=10)
        assert clean(log, now=10).records_dropped == len(below) - len(kept_below) > 0
        log.high_watermark = None  # reads stop there: see every record
        assert read_all(log) == kept_below + [r for r in records if r.offset >= hw]
    finally:
        log.close()


def test_a_compacted_log_reads_the_same_after_reopen(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    write(log, random_batches(random.Random(2), 120))
    clean(log, now=10)
    records, end = read_all(log), log.end_offset
    log.close()
    log = PartitionLog(tmp_path, CONFIG)
    try:
        assert log.recovery.clean
        assert read_all(log) == records and log.end_offset == end
    finally:
        log.close()


def test_tombstones_are_kept_for_delete_retention_ms_then_dropped(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    try:
        append(log, [b"v1"], keys=["gone"], at=1_000)
        append(log, [None], keys=["gone"], at=2_000)
        append(log, [b"x" * 900], keys=["other"], at=3_000)  # rolls: the tombstone is closed
        assert len(log.segments) >= 2
        clean(log, now=2_000 + DAY_MS)
        assert [(r.offset, r.key, r.value) for r in read_all(log)][:2] == [(1, "gone", None),
                                                                          (2, "other", b"x" * 900)]
        clean(log, now=2_001 + DAY_MS)
        assert [(r.offset, r.key) for r in read_all(log)] == [(2, "other")]
    finally:
        log.close()


def test_keyless_records_are_always_kept(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    try:
        for n in range(30):
            append(log, [b"keyless %d" % n, b"keyed %d" % n], keys=[None, "k"])
        clean(log, now=10**12)
        got = read_all(log)
        keyless = [r for r in got if r.key is None]
        assert [r.value for r in keyless] == [b"keyless %d" % n for n in range(30)]
        assert [r.offset for r in keyless] == list(range(0, 60, 2))
    finally:
        log.close()


def test_the_active_segment_is_never_compacted(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    try:
        for n in range(5):
            append(log, [b"%d" % n], keys=["same"])
        assert len(log.segments) == 1
        assert clean(log, now=10**12).records_dropped == 0
        assert len(read_all(log)) == 5
    finally:
        log.close()


def test_a_segment_whose_records_are_all_superseded_becomes_empty_and_reopens(
        tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    for n in range(30):
        append(log, [b"%d" % n + b"." * 50], keys=["only"])
    clean(log, now=0)
    assert [s.size for s in log.segments[:-1]] == [0] * (len(log.segments) - 1)
    records, end = read_all(log), log.end_offset
    log.close()
    log = PartitionLog(tmp_path, CONFIG)
    try:
        assert read_all(log) == records and log.end_offset == end
        assert log.read(0, 1)[0].header.base_offset == log.segments[-1].base_offset
        assert append(log, [b"new"], keys=["only"]) == end
    finally:
        log.close()


def test_a_read_from_a_compacted_gap_starts_at_the_next_surviving_record(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path, CONFIG)
    try:
        olds: list[Batch] = [[("k", b"old %d" % n)] for n in range(10)]
        fillers: list[Batch] = [[("x" * 300, b"filler %d" % n)] for n in range(6)]
        write(log, olds + fillers)
        clean(log, now=0)
        survivors_ = read_all(log)
        assert 0 not in {r.offset for r in survivors_}
        for offset in range(log.start_offset, log.end_offset):
            first = read_all(log, offset)[0]
            assert first == next(r for r in survivors_ if r.offset >= offset)
    finally:
        log.close()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), batches=st.integers(1, 80),
       now=st.sampled_from([0, 40 + DAY_MS, 10**12]))
def test_clean_matches_the_model_for_any_workload(seed: int, batches: int, now: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = PartitionLog(Path(tmp), CONFIG)
        try:
            write(log, random_batches(random.Random(seed), batches))
            records = read_all(log)
            clean(log, now=now)
            assert read_all(log) == survivors(records, log.segments[-1].base_offset, now)
            assert clean(log, now=now).records_dropped == 0
        finally:
            log.close()
