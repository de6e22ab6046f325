"""Source offsets: where each source partition resumes, kept in a compacted topic.

Every record a source task sends carries one header, ``rail.connect``: the msgpack array
``[task key, sequence]``, where the task key is ``<connector>/<task>`` and the sequence
counts the task's records.  (Earlier versions also put the source partition and offset in
it: 70 of a record's ~110 bytes in the benchmark, paid by the source, the broker and every
consumer; ``ours`` still reads those headers.)  After each flushed batch the task writes a
checkpoint to ``_connect-offsets`` (compacted, keyed by the task's key): the offset per
source partition, the sequence reached, and the data partitions' end offsets the task had
seen acknowledged.

A task killed between a batch's acknowledgement and its checkpoint loses nothing and
repeats nothing: on start it reads its last checkpoint, then scans the data topics from
the checkpoint's positions to their ends for records with its own key and a sequence above
the checkpoint's (``recover``).  The source is opened at the checkpoint's offsets and reads
the same records in the same order again; the task numbers them from the checkpoint's
sequence on and does not send again those whose numbers were found stored.  The scan
covers at most the batches sent after the last checkpoint.
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
_decode = msgspec.msgpack.Decoder(list[Any]).decode
FETCH_BYTES = 4 * 1024 * 1024


class Checkpoint(msgspec.Struct, kw_only=True):
    offsets: dict[str, Any] = {}
    seq: int = 0
    positions: dict[str, dict[int, int]] = {}  # data topic -> partition -> next offset


def header_prefix(task_key: str) -> bytes:
    """The bytes every ``rail.connect`` header of the task starts with: the header is this
    plus the msgpack of its sequence number (one small encode a record, not an array's)."""
    return b"\x92" + _encode(task_key)


def record_headers(task_key: str, seq: int) -> dict[str, Any]:
    return {HEADER: header_prefix(task_key) + _encode(seq)}


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
    """The last checkpoint (its positions moved to the data topics' ends now) and the
    sequence numbers of the task's records stored after it.

    The records after the checkpoint are normally a run of numbers from its sequence on;
    a kill between two partitions' batches of one flush can leave a hole (a record of one
    partition missing, later ones of another there).  Either way the source reads again
    from the checkpoint's offsets, and the records whose numbers are in the returned set
    are not sent again."""
    point = load_checkpoint(conn, task_key)
    meta = conn.call(p.Metadata(topics=None))
    known = {t.name: t for t in meta.topics}
    found: set[int] = set()
    for topic in topics:
        info = known.get(topic)
        if info is None:
            continue
        for part in info.partitions:
            start = point.positions.get(topic, {}).get(part.partition, part.start_offset)
            for event in read_partition(conn, topic, part.partition, start):
                seq = ours(event, task_key)
                if seq is not None and seq > point.seq:
                    found.add(seq)
            point.positions.setdefault(topic, {})[part.partition] = part.end_offset
    return point, found


def ours(event: Any, task_key: str) -> int | None:
    """The sequence number of a record of the task, else None."""
    raw = (event.headers or {}).get(HEADER)
    if raw is None:
        return None
    try:
        fields = _decode(raw.encode() if isinstance(raw, str) else raw)
    except msgspec.DecodeError:
        return None  # not written by a connect task: someone else's header
    if len(fields) < 2 or fields[0] != task_key or not isinstance(fields[1], int):
        return None
    return fields[1]


def checkpoint_value(point: Checkpoint) -> Any:
    return msgspec.to_builtins(point)

