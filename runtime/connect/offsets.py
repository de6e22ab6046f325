"""Source offsets: where each source partition resumes, kept in a compacted topic.

Every record a source task sends carries one header, ``rail.connect``: the msgpack array
``[task key, sequence, source partition, source offset]``, where the task key is
``<connector>/<task>`` and the sequence counts the task's records (one header, not four:
each costs the source, the broker and every consumer something per record).
After each flushed batch the task writes a checkpoint to ``_connect-offsets`` (compacted,
keyed by the task's key): the offset per source partition, the sequence reached, and the
data partitions' end offsets the task had seen acknowledged.

A task killed between a batch's acknowledgement and its checkpoint loses nothing: on start
it reads its last checkpoint, then scans the data topics from the checkpoint's positions to
their ends for records with its own key, and advances each source partition's offset over
the unbroken run of sequence numbers after the checkpoint (``recover``).  The scan covers
at most the batches sent after the last checkpoint.
"""

from __future__ import annotations

from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.client import events_of_fetch
from runtime.connection import Connection

OFFSETS_TOPIC = "_connect-offsets"
HEADER = "rail.connect"
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[str, int, str, Any]).decode
FETCH_BYTES = 4 * 1024 * 1024


class Checkpoint(msgspec.Struct, kw_only=True):
    offsets: dict[str, Any] = {}
    seq: int = 0
    positions: dict[str, dict[int, int]] = {}  # data topic -> partition -> next offset


def record_headers(task_key: str, seq: int, partition: str, offset: Any) -> dict[str, Any]:
    return {HEADER: _encode((task_key, seq, partition, offset))}


def ensure_offsets_topic(conn: Connection) -> None:
    conn.call(p.CreateTopic(topic=OFFSETS_TOPIC, partitions=1,
                            config={"cleanup_policy": "compact"}, exist_ok=True))


def read_partition(conn: Connection, topic: str, partition: int, start: int) -> list[Any]:
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


def load_checkpoint(conn: Connection, task_key: str) -> Checkpoint:
    ensure_offsets_topic(conn)
    last = None
    for event in read_partition(conn, OFFSETS_TOPIC, 0, 0):
        if event.key == task_key:
            last = event.value
    return Checkpoint() if last is None else msgspec.convert(last, Checkpoint, strict=False)


def recover(conn: Connection, task_key: str, topics: list[str]) -> tuple[Checkpoint, set[int]]:
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
    found: dict[int, tuple[str, Any]] = {}
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
        point.offsets[partition] = offset
    return point, set(found)


def ours(event: Any, task_key: str) -> tuple[int, str, Any] | None:
    """(sequence, source partition, source offset) of a record of the task, else None."""
    raw = (event.headers or {}).get(HEADER)
    if raw is None:
        return None
    try:
        key, seq, partition, offset = _decode(raw.encode() if isinstance(raw, str) else raw)
    except msgspec.DecodeError:
        return None  # not written by a connect task: someone else's header
    return (seq, partition, offset) if key == task_key else None


def checkpoint_value(point: Checkpoint) -> Any:
    return msgspec.to_builtins(point)

