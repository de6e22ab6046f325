"""Source offsets: where each source partition resumes, kept in a compacted topic.

Every record a source task sends carries one header, ``rail.src``: the msgpack array
``[task key, sequence, source offset]``, or ``[task key, sequence, source offset, source
partition]`` when the record's source partition is not the one of the record numbered just
before it.  The task key is ``<connector>/<task>``; the sequence counts the task's records.
(Until 7199af3 every header, then named ``rail.connect``, held the partition: with a file
source it is the file's path, 70 of a benchmark record's ~110 bytes, paid by the source,
the broker and every consumer.  ``ours`` still reads those headers.)  After each flushed
batch the task writes a checkpoint to ``_connect-offsets`` (compacted, keyed by the task's
key): the offset per source partition, the sequence reached and the source partition of
that record, and the data partitions' end offsets the task had seen acknowledged.

A task killed between a batch's acknowledgement and its checkpoint loses nothing: on start
it reads its last checkpoint, then scans the data topics from the checkpoint's positions to
their ends for records with its own key, and advances each source partition's offset over
the unbroken run of sequence numbers after the checkpoint (``recover``); a record without
a partition belongs to the partition of the one before it in the run (the checkpoint's for
the first).  The scan covers at most the batches sent after the last checkpoint.
"""

from __future__ import annotations

from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.client import events_of_fetch
from runtime.connect.errors import ConnectError
from runtime.routing import Link

OFFSETS_TOPIC = "_connect-offsets"
HEADER = "rail.src"
OLD_HEADER = "rail.connect"  # [task key, sequence, source partition, source offset]
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[Any]).decode
FETCH_BYTES = 4 * 1024 * 1024


class Checkpoint(msgspec.Struct, kw_only=True):
    offsets: dict[str, Any] = {}
    seq: int = 0
    partition: str | None = None  # the source partition of record ``seq``
    positions: dict[str, dict[int, int]] = {}  # data topic -> partition -> next offset


class Headers:
    """Makes a task's ``rail.src`` header values: the task key's bytes are encoded once;
    each record adds its sequence and offset, and its partition only when it changed."""

    def __init__(self, task_key: str, partition: str | None) -> None:
        key = _encode(task_key)
        self.short, self.long = b"\x93" + key, b"\x94" + key
        self.partition = partition  # of the record numbered last

    def value(self, seq: int, partition: str, offset: Any) -> bytes:
        if partition == self.partition:
            return self.short + _encode(seq) + _encode(offset)
        self.partition = partition
        return self.long + _encode(seq) + _encode(offset) + _encode(partition)


def record_headers(task_key: str, seq: int, partition: str, offset: Any) -> dict[str, Any]:
    """The header of a record that names its partition (as the first after a start does)."""
    return {HEADER: Headers(task_key, None).value(seq, partition, offset)}


def ensure_offsets_topic(conn: Link) -> None:
    conn.call(p.CreateTopic(topic=OFFSETS_TOPIC, partitions=1,
                            config={"cleanup_policy": "compact"}, exist_ok=True))


def read_partition(conn: Link, topic: str, partition: int, start: int) -> list[Any]:
    """Every event of ``topic[partition]`` from ``start`` to its end offset now."""
    events: list[Any] = []
    offset = start
    while True:
        reply = conn.call(p.Fetch(topic=topic, partition=partition, offset=offset,
                                  max_bytes=FETCH_BYTES))
        offset = max(offset, reply.start_offset)
        got = events_of_fetch(reply)
        events.extend(got)
        if not got or got[-1].offset + 1 >= reply.end_offset:
            return events
        offset = got[-1].offset + 1


def load_checkpoint(conn: Link, task_key: str) -> Checkpoint:
    ensure_offsets_topic(conn)
    last = None
    for event in read_partition(conn, OFFSETS_TOPIC, 0, 0):
        if event.key == task_key:
            last = event.value
    return Checkpoint() if last is None else msgspec.convert(last, Checkpoint, strict=False)


def recover(conn: Link, task_key: str, topics: list[str]) -> tuple[Checkpoint, set[int]]:
    """The last checkpoint, advanced by the task's records stored after it, and the
    sequence numbers stored beyond the first one missing.

    Every record of the task has the next sequence number and a batch is acknowledged
    before its checkpoint, so the records after the checkpoint are a run from its sequence
    on, unless a kill came between two partitions' batches of one flush: then a record of
    one partition is missing and later ones of another are there.  The offsets advance
    over the unbroken run only; the source reads again from there, and the records whose
    numbers come back in the returned set are already stored and are not sent again."""
    point = load_checkpoint(conn, task_key)
    meta = conn.call(p.Metadata(topics=None))
    known = {t.name: t for t in meta.topics}
    found: dict[int, tuple[str | None, Any]] = {}
    for topic in topics:
        info = known.get(topic)
        if info is None:
            continue
        for part in info.partitions:
            start = point.positions.get(topic, {}).get(part.partition, part.start_offset)
            for event in read_partition(conn, topic, part.partition, start):
                mine = ours(event, task_key)
                if mine is not None and mine[0] > point.seq:
                    found[mine[0]] = mine[1:]
            point.positions.setdefault(topic, {})[part.partition] = part.end_offset
    while point.seq + 1 in found:
        point.seq += 1
        partition, offset = found.pop(point.seq)
        # No partition: the one of the record numbered before it, in the same process
        # (where it is the run's previous record, or the checkpoint's last).
        point.partition = partition if partition is not None else point.partition
        if point.partition is None:
            raise ConnectError(f"source {task_key}: record {point.seq} names no source "
                               "partition and none came before it")
        point.offsets[point.partition] = offset
    return point, set(found)


def ours(event: Any, task_key: str) -> tuple[int, str | None, Any] | None:
    """(sequence, source partition or None for the previous one's, source offset) of a
    record of the task, else None."""
    headers = event.headers or {}
    raw, old = headers.get(HEADER), False
    if raw is None:
        raw, old = headers.get(OLD_HEADER), True
        if raw is None:
            return None
    try:
        fields = _decode(raw.encode() if isinstance(raw, str) else raw)
    except msgspec.DecodeError:
        return None  # not written by a connect task: someone else's header
    if len(fields) < 3 or fields[0] != task_key or not isinstance(fields[1], int):
        return None
    if old:
        return (fields[1], fields[2], fields[3]) if len(fields) == 4 else None
    return fields[1], (fields[3] if len(fields) > 3 else None), fields[2]


def checkpoint_value(point: Checkpoint) -> Any:
    return msgspec.to_builtins(point)

