"""The changelog: a compacted topic holding every store's latest values and the checkpoint.

One commit of a task is one batch on the changelog partition of the same number:

    [value, key, nil, timestamp]  per store update: key = msgpack [store, key bytes],
                                   value = the msgpack bytes of the value (nil: deleted)
    [checkpoint, CHECKPOINT_KEY]   last: the task's Checkpoint after this commit

The broker appends a batch whole or not at all, so the log never holds a checkpoint without
the updates that go with it.  Compaction keeps the latest record of each key, so reading the
partition from any offset to its end and applying every record leaves the state as of the
last checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.connection import Connection
from runtime.routing import Router
from runtime.streams import checkpoint as ck
from runtime.streams.errors import StreamsError

CHECKPOINT_KEY = b"\x00rail.checkpoint"
FETCH_BYTES = 8 * 1024 * 1024
_encoder = msgspec.msgpack.Encoder()
_store_key = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw])
_records = msgspec.msgpack.Decoder(list[p.WireRecord])


def changelog_topic(app: str, topology: int = 0) -> str:
    """``<app>.changelog`` for the tasks reading the source, ``<app>.changelog-N`` for
    those reading repartition topic N (``app`` cut and hashed where the name would pass
    249 characters)."""
    return p.fitted_name("", app, ".changelog" if topology == 0 else f".changelog-{topology}")


_TOPOLOGY = re.compile(r"\.changelog-([1-9][0-9]{0,5})$")


def is_changelog_of(app: str, topic: str) -> bool:
    if topic == changelog_topic(app):
        return True
    found = _TOPOLOGY.search(topic)
    return found is not None and topic == changelog_topic(app, int(found[1]))


def batch_records(updates: Iterable[tuple[str, bytes, bytes | None]],
                  checkpoint: ck.Checkpoint, timestamp: int) -> tuple[bytes, int]:
    """The records array of one commit's changelog batch, and how many records it holds."""
    records: list[Any] = [[value, _encoder.encode([store, msgspec.Raw(key)]), None, timestamp]
                          for store, key, value in updates]
    records.append([ck.encode(checkpoint), CHECKPOINT_KEY, None, timestamp])
    return _encoder.encode(records), len(records)


class Restored(msgspec.Struct):
    """What reading a changelog partition found: the updates in log order, the last
    checkpoint, and the offset the partition ended at."""

    updates: list[tuple[str, bytes, bytes | None]]
    checkpoint: ck.Checkpoint | None
    end_offset: int


def read(conn: Connection | Router, topic: str, partition: int, start: int = 0) -> Restored:
    """Read changelog ``topic[partition]`` from ``start`` to its end (compacted: with gaps)."""
    updates: list[tuple[str, bytes, bytes | None]] = []
    checkpoint = None
    offset = start
    end = None
    while end is None or offset < end:
        reply = conn.call(p.Fetch(topic=topic, partition=partition, offset=offset,
                                  max_bytes=FETCH_BYTES))
        end = reply.end_offset if end is None else end
        offset = max(offset, reply.start_offset)
        if not reply.batches:
            if offset >= reply.end_offset:
                break
            offset = reply.end_offset  # nothing left below the end: compacted away
            continue
        for base, _ts, raw in reply.batches:
            records = _records.decode(raw)
            for r in records[max(0, offset - base):]:
                if r.key == CHECKPOINT_KEY:
                    checkpoint = ck.decode(r.value)
                else:
                    store, key = _store_key.decode(r.key)
                    updates.append((store, bytes(key), r.value))
            offset = max(offset, base + len(records))
    return Restored(updates, checkpoint, max(offset, end or 0))


def last_checkpoint(conn: Connection | Router, topic: str, partition: int) -> ck.Checkpoint | None:
    """The checkpoint of the last commit in changelog ``topic[partition]`` (None: empty)."""
    return last_checkpoint_at(conn, topic, partition)[0]


def end_offset(conn: Connection | Router, topic: str, partition: int) -> int:
    return int(conn.call(p.Fetch(topic=topic, partition=partition, offset=0,
                                 max_bytes=1)).end_offset)


def last_checkpoint_at(conn: Connection | Router, topic: str,
                       partition: int) -> tuple[ck.Checkpoint | None, int]:
    """The checkpoint of the last commit in changelog ``topic[partition]`` (None: empty),
    and the partition's end offset.

    Every batch of a changelog ends with its checkpoint, and the cleaner never drops the
    latest record of a key, so the record just below the end offset is always one."""
    end = end_offset(conn, topic, partition)
    if end == 0:
        return None, 0
    reply = conn.call(p.Fetch(topic=topic, partition=partition, offset=end - 1,
                              max_bytes=FETCH_BYTES))
    for base, _ts, raw in reply.batches:
        records = _records.decode(raw)
        if base <= end - 1 < base + len(records) and records[end - 1 - base].key == CHECKPOINT_KEY:
            return ck.decode(records[end - 1 - base].value), end
    raise StreamsError(f"{topic}[{partition}] does not end with a checkpoint: is it written "
                       "by anything but this application's pipeline?")
