"""Helpers for storage tests: append records to a PartitionLog the way the broker does,
and read them back record by record.

Values and keys are msgpack-encoded here, so a test compares plain Python values.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from brokerd.log.batch import NIL, Record, decode_records, decode_value, encode_records, is_nil
from brokerd.log.partition import PartitionLog

_encode = msgspec.msgpack.encode


class Stored(NamedTuple):
    """One record as read back: its offset, key (None when keyless), value, timestamp."""

    offset: int
    key: Any
    value: Any
    timestamp: int


def batch_payload(values: list[Any], keys: list[Any] | None = None,
                  timestamps: list[int | None] | None = None) -> bytes:
    """The msgpack payload a producer sends for these records."""
    keys = keys or [None] * len(values)
    timestamps = timestamps or [None] * len(values)
    return encode_records([
        Record(value=msgspec.Raw(_encode(v)), key=NIL if k is None else msgspec.Raw(_encode(k)),
               timestamp=t)
        for v, k, t in zip(values, keys, timestamps, strict=True)
    ])


def append(log: PartitionLog, values: list[Any], *, keys: list[Any] | None = None,
           timestamps: list[int | None] | None = None, at: int = 1_000,
           producer_id: int = 0, base_sequence: int = -1) -> int:
    """Append one batch appended at time ``at``; return its base offset.

    Like the broker, a record without a timestamp counts as appended at ``at`` for the
    batch's first and max timestamps.
    """
    stamps = [at if t is None else t for t in (timestamps or [None] * len(values))]
    return log.append(batch_payload(values, keys, timestamps), len(values), stamps[0],
                      max(stamps), producer_id, base_sequence, append_timestamp=at)


def read_all(log: PartitionLog, offset: int | None = None,
             max_bytes: int = 64 * 1024) -> list[Stored]:
    """Every record from the batch holding ``offset`` (default: the start) to the end."""
    offset = log.start_offset if offset is None else offset
    out: list[Stored] = []
    while offset < log.end_offset:
        batches = log.read(offset, max_bytes)
        if not batches:
            break
        for batch in batches:
            h = batch.header
            for i, r in enumerate(decode_records(batch.payload)):
                key = None if is_nil(r.key) else decode_value(r.key)
                ts = h.append_timestamp if r.timestamp is None else r.timestamp
                out.append(Stored(h.base_offset + i, key, decode_value(r.value), ts))
        offset = batches[-1].header.next_offset
    return out


def copy_dir(src: Path, dst: Path) -> Path:
    """A fresh copy of a partition directory, to damage without touching the original."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def log_files(directory: Path) -> list[Path]:
    """The segment ``.log`` files of a partition, oldest first."""
    return sorted(directory.glob("*.log"))
