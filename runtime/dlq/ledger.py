"""What was replayed from a DLQ: a cursor per partition and a ledger topic.

- The cursor is the committed offset of the group ``rail.dlq-replay.<dlq>``: every dead
  letter below it has been replayed (``rail groups`` shows the rest as lag).
- The ledger is the compacted topic ``<dlq>.replayed``: one record per replayed dead letter
  (key ``"<partition>@<offset>"``, value where it went and the dead letter's timestamp),
  and one ``"intent"`` record written before a replay sends anything and marked done after.

A replay that finds an open intent was interrupted: ``recover`` reads the source topics from
the end offsets the intent noted and counts as replayed every record whose
``rail.replayed-from`` names this DLQ.  See docs/dlq.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from brokerd import protocol as p
from runtime.client import Event, Producer
from runtime.connection import BrokerError
from runtime.dlq.lease import Lease
from runtime.dlq.letters import (REPLAYED_FROM, cursor_group, fetch_range, header, ledger_topic,
                                 location, parse_location, partitions, read_all, source_topic,
                                 text)
from runtime.routing import Link

INTENT_KEY = "intent"
LEDGER_SEGMENT_BYTES = 1024 * 1024  # small: compaction cleans only rolled segments


@dataclass
class ReplayRecord:
    """What was replayed from one DLQ: the cursor per partition and the ledger."""

    dlq: str
    cursors: dict[int, int] = field(default_factory=dict)
    replayed: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    intent: dict[str, Any] | None = None

    def is_replayed(self, event: Event) -> bool:
        """Below the cursor, or in the ledger.  A ledger entry names the dead letter's
        timestamp too: a DLQ deleted and created again starts its offsets from 0 anew (its
        cursor goes with it, the ledger topic does not)."""
        return (event.offset < self.cursors.get(event.partition, 0)
                or self.where(event) is not None)

    def where(self, event: Event) -> str | None:
        """Where the dead letter went when replayed ("?" when unknown), None if it was not."""
        entry = self.replayed.get((event.partition, event.offset))
        if entry is None or entry.get("ts", event.timestamp) != event.timestamp:
            return None
        return str(entry.get("to") or "?")

    @property
    def interrupted(self) -> bool:
        return self.intent is not None and self.intent.get("state") == "open"


def load_record(conn: Link, dlq: str) -> ReplayRecord:
    """Read ``dlq``'s replay cursor (committed offsets) and ledger from the broker."""
    record = ReplayRecord(dlq)
    described = conn.call(p.DescribeGroup(group=cursor_group(dlq)))
    for part in described.partitions:
        if part.topic == dlq and part.committed is not None:
            record.cursors[part.partition] = part.committed
    for event in read_all(conn, ledger_topic(dlq)):
        key = text(event.key) if event.key is not None else ""
        if key == INTENT_KEY:
            record.intent = event.value if isinstance(event.value, dict) else None
            continue
        partition, _, offset = key.partition("@")
        if partition.isdigit() and offset.isdigit():
            if event.value is None:  # a tombstone: forgotten
                record.replayed.pop((int(partition), int(offset)), None)
            else:
                record.replayed[int(partition), int(offset)] = (
                    event.value if isinstance(event.value, dict) else {})
    return record


def ledger_entry(producer: Producer, dead: Event, to: str | None) -> dict[str, Any]:
    entry = {"to": to, "ts": dead.timestamp, "at": int(time.time() * 1000)}
    producer.send(ledger_topic(dead.topic), entry, key=f"{dead.partition}@{dead.offset}")
    return entry


def ensure_ledger(conn: Link, dlq: str) -> None:
    conn.call(p.CreateTopic(topic=ledger_topic(dlq), partitions=1,
                            config={"cleanup_policy": "compact", "retention_ms": -1,
                                    "segment_bytes": LEDGER_SEGMENT_BYTES}, exist_ok=True))


def _source_ends(conn: Link, topics: set[str]) -> dict[str, dict[str, int]]:
    ends: dict[str, dict[str, int]] = {}
    for topic in sorted(topics):
        ends[topic] = {str(i.partition): i.end_offset for i in partitions(conn, topic) or []}
    return ends


def interrupted_sends(conn: Link, record: ReplayRecord) -> list[tuple[Event, str]]:
    """The dead letters an interrupted replay had sent, with where each went.

    The source topics are read from the end offsets the intent noted before anything was
    sent; a record there whose ``rail.replayed-from`` names this DLQ was sent by that
    replay (only the lease holder replays)."""
    sent: dict[tuple[int, int], str] = {}
    for topic, ends in ((record.intent or {}).get("sources") or {}).items():
        for info in partitions(conn, topic) or []:
            start = max(int(ends.get(str(info.partition), 0)), info.start_offset)
            for event in fetch_range(conn, topic, info.partition, start, info.end_offset):
                origin = parse_location(header(event, REPLAYED_FROM) or "")
                if origin is not None and origin[0] == record.dlq:
                    sent[origin[1], origin[2]] = location(topic, event.partition, event.offset)
    return [(dead, sent[dead.partition, dead.offset])
            for dead in _dead_letters_at(conn, record.dlq, set(sent))]


def recover(conn: Link, producer: Producer | None, record: ReplayRecord) -> int:
    """Finish an interrupted replay: record as replayed whatever of it reached its source
    (in ``record``, and in the ledger unless ``producer`` is None, as on a dry run).
    Returns how many dead letters were found sent."""
    found = interrupted_sends(conn, record)
    for dead, to in found:
        entry = {"to": to, "ts": dead.timestamp}
        if producer is not None:
            entry = ledger_entry(producer, dead, to)
        record.replayed[dead.partition, dead.offset] = entry
    if producer is not None:
        producer.send(ledger_topic(record.dlq), {"state": "done", "recovered": len(found)},
                      key=INTENT_KEY)
        flush(producer)
    record.intent = {"state": "done"}
    return len(found)


def _dead_letters_at(conn: Link, dlq: str, places: set[tuple[int, int]]) -> list[Event]:
    """The dead letters of ``dlq`` at these (partition, offset) places that still exist."""
    found: list[Event] = []
    for part in sorted({pl[0] for pl in places}):
        offsets = [off for pt, off in places if pt == part]
        found.extend(e for e in fetch_range(conn, dlq, part, min(offsets), max(offsets) + 1)
                     if (part, e.offset) in places)
    return found


def flush(producer: Producer) -> None:
    producer.flush()
    if producer.errors:
        raise producer.errors[0]


def send_intent(conn: Link, producer: Producer, dlq: str, events: list[Event]) -> None:
    """Durably note, before sending, where the source topics ended (see ``recover``)."""
    sources = _source_ends(conn, {source_topic(e) for e in events})
    producer.send(ledger_topic(dlq), {"state": "open", "sources": sources,
                                      "at": int(time.time() * 1000)}, key=INTENT_KEY)
    flush(producer)


def record_replays(producer: Producer, dlq: str, events: list[Event],
                   sent_to: dict[tuple[int, int], str]) -> None:
    """Durably note that ``events`` were replayed (to ``sent_to``), and the intent done."""
    for event in events:
        ledger_entry(producer, event, sent_to.get((event.partition, event.offset)))
    producer.send(ledger_topic(dlq), {"state": "done"}, key=INTENT_KEY)
    flush(producer)


def move_cursor(lease: Lease, conn: Link, record: ReplayRecord,
                moves: dict[int, int]) -> None:
    """Commit the cursor forward as the lease's member.  The ledger already covers what it
    would, so a commit refused (the lease was lost) loses nothing."""
    offsets = [(record.dlq, part, to) for part, to in sorted(moves.items())
               if to > record.cursors.get(part, 0)]
    if not offsets:
        return
    try:
        lease.commit(conn, offsets)
    except BrokerError as exc:
        if exc.code not in ("NOT_MEMBER", "STALE_GENERATION"):
            raise
