"""The cleaner of compacted topics: keep the latest record per key in closed segments.

Only what lies below ``cleanable_end`` is cleaned: the log's end, or in a cluster the high
watermark, as in Kafka (a newer value not yet on every in-sync replica may be cut by a
failover, so the older one stays until it is).  Offsets never change: a batch whose records
all survive is copied as it is; a surviving record of a partly dropped batch is written as
a batch of its own at its original offset (attribute ``ATTR_COMPACTED``), so offsets get
gaps.  Records without a key are kept.  A tombstone (nil value) is kept for
``delete_retention_ms`` after it was appended, so consumers that lag can still see the
delete, then dropped.

Each segment is rewritten to ``<base>.log.cleaned``, fsynced, renamed over the original,
and its index rebuilt; a crash in between leaves either the old or the new file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from brokerd.log.batch import (
    ATTR_COMPACTED,
    HEADER_SIZE,
    Record,
    decode_header,
    decode_records,
    encode_header,
    encode_records,
    is_nil,
    key_content,
)
from brokerd.log.files import fsync_dir, write_all
from brokerd.log.index import NO_TIMESTAMP
from brokerd.log.partition import PartitionLog, now_ms
from brokerd.log.segment import Segment, StoredBatch


@dataclass
class CleanReport:
    segments_rewritten: int = 0
    records_dropped: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def latest_offsets(log: PartitionLog, limit: int) -> dict[bytes, int]:
    """Map each key (its msgpack bytes) to the offset of its latest record below
    ``limit``."""
    latest: dict[bytes, int] = {}
    for seg in log.segments:
        if seg.base_offset >= limit:
            break
        for batch in seg.read(seg.base_offset, max(seg.size, 1), verify=False):
            for i, record in enumerate(decode_records(batch.payload)):
                offset = batch.header.base_offset + i
                if offset < limit and not is_nil(record.key):
                    latest[key_content(record.key)] = offset
    return latest


def cleanable_end(log: PartitionLog) -> int:
    """Where the cleaner stops: the log's end, or in a cluster its high watermark (as
    Kafka's cleaner does).  A newer value above it may still be cut by a failover (it is
    not on every in-sync replica yet), so it must not drop the older one, acknowledged."""
    hw = log.high_watermark
    return log.end_offset if hw is None else min(hw, log.end_offset)


def clean(log: PartitionLog, now: int | None = None, limit: int | None = None) -> CleanReport:
    """Compact every closed segment of ``log`` below ``limit`` (default ``cleanable_end``);
    the active segment and every record from there on are left alone."""
    now = now_ms() if now is None else now
    report = CleanReport()
    limit = cleanable_end(log) if limit is None else min(limit, cleanable_end(log))
    latest = latest_offsets(log, limit)
    horizon = now - log.config.delete_retention_ms
    for seg in log.segments[:-1]:
        if seg.base_offset >= limit:
            break
        kept, dropped = _survivors(seg, latest, horizon, limit)
        if dropped:
            report.bytes_before += seg.size
            _rewrite(log, seg, kept)
            report.bytes_after += seg.size
            report.segments_rewritten += 1
            report.records_dropped += dropped
    return report


Kept = list[StoredBatch | tuple[int, int, Record]]


def _survivors(seg: Segment, latest: dict[bytes, int], horizon: int,
               limit: int) -> tuple[Kept, int]:
    kept: Kept = []
    dropped = 0
    for batch in seg.read(seg.base_offset, max(seg.size, 1), verify=True):
        header = batch.header
        records = decode_records(batch.payload)
        alive = [
            (header.base_offset + i, r) for i, r in enumerate(records)
            if header.base_offset + i >= limit or is_nil(r.key)
            or (latest.get(key_content(r.key)) == header.base_offset + i
                and not (is_nil(r.value) and header.append_timestamp < horizon))
        ]
        dropped += len(records) - len(alive)
        if len(alive) == len(records):
            kept.append(batch)
        else:
            kept.extend((offset, header.append_timestamp, r) for offset, r in alive)
    return kept, dropped


def _rewrite(log: PartitionLog, seg: Segment, kept: Kept) -> None:
    tmp = seg.log_path.with_name(seg.log_path.name + ".cleaned")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for item in kept:
            write_all(fd, *_framed(item))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, seg.log_path)
    fsync_dir(log.directory)
    seg.reopen()
    result = seg.scan(0, seg.base_offset, NO_TIMESTAMP, dense=False, keep_headers=True)
    seg.rebuild_index(result.headers)
    seg.write_index()


def _framed(item: StoredBatch | tuple[int, int, Record]) -> tuple[bytes, bytes | memoryview]:
    if isinstance(item, StoredBatch):
        h = item.header
        header = encode_header(h.base_offset, item.payload, h.record_count, h.first_timestamp,
                               h.max_timestamp, h.append_timestamp, h.producer_id,
                               h.base_sequence, h.attributes)
        return header, item.payload
    offset, appended, record = item
    payload = encode_records([record])
    ts = appended if record.timestamp is None else record.timestamp
    header = encode_header(offset, payload, 1, ts, ts, appended, attributes=ATTR_COMPACTED)
    assert decode_header(header).size == HEADER_SIZE + len(payload)
    return header, payload
