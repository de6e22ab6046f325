"""Dead-letter topics: where a worker puts an event its handler kept failing on.

An event of ``orders`` that fails every attempt goes to ``orders.dlq`` with its original
key, value and headers, plus ``rail.*`` headers saying what went wrong and where it came
from.  ``replay`` sends selected dead letters back to their source topic, each at most once:

- a cursor per DLQ partition, the committed offset of the group ``rail.dlq-replay.<dlq>``:
  every dead letter below it has been replayed (``rail groups`` shows the rest as lag);
- a ledger, the compacted topic ``<dlq>.replayed``: one record per replayed dead letter
  (key ``"<partition>@<offset>"``, value where it went), and one ``"intent"`` record
  written before a replay sends anything and marked done after.  A replay that finds an
  open intent was interrupted: it reads the source topics from the offsets the intent
  noted and counts as replayed every record whose ``rail.replayed-from`` header names
  this DLQ, so a replay killed half-way and run again sends no dead letter twice.

A replayed event carries its original headers plus ``rail.replayed-from`` =
``<dlq>[partition]@offset``; when it fails again, its new dead letter keeps that header,
which is how ``rail dlq list`` tells a re-failure from a new failure.  See docs/dlq.md.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.client import Event, Producer
from runtime.connection import BrokerError, Connection

SUFFIX = ".dlq"
HEADER_PREFIX = "rail."
REPLAYED_FROM = "rail.replayed-from"
LEDGER_SUFFIX = ".replayed"
CURSOR_GROUP_PREFIX = "rail.dlq-replay."
INTENT_KEY = "intent"
_LOCATION = re.compile(r"^(?P<topic>.+)\[(?P<partition>\d+)\]@(?P<offset>\d+)$")


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + SUFFIX


def dlq_name(topic: str) -> str:
    """The DLQ a user means by ``topic``: ``topic`` itself when it ends in ``.dlq``."""
    return topic if topic.endswith(SUFFIX) else dlq_topic(topic)


def ledger_topic(dlq: str) -> str:
    """The compacted topic recording what was replayed from ``dlq``."""
    return dlq + LEDGER_SUFFIX


def cursor_group(dlq: str) -> str:
    """The group whose committed offsets are ``dlq``'s replay cursor."""
    return CURSOR_GROUP_PREFIX + dlq


def location(topic: str, partition: int, offset: int) -> str:
    """``topic[partition]@offset``, the way Rail writes a record's place."""
    return f"{topic}[{partition}]@{offset}"


def parse_location(text: str) -> tuple[str, int, int] | None:
    """``(topic, partition, offset)`` of a ``topic[partition]@offset`` text, else None."""
    m = _LOCATION.match(text)
    return (m["topic"], int(m["partition"]), int(m["offset"])) if m else None


# -- writing dead letters (the worker host) ---------------------------------------------
def dead_letter_headers(event: Event, error: BaseException, attempts: int) -> dict[str, Any]:
    """The original headers plus the ``rail.*`` ones describing the failure.

    A replayed event's ``rail.replayed-from`` is among its headers and stays: it marks the
    new dead letter as a re-failure of the one it was replayed from."""
    headers: dict[str, Any] = dict(event.headers or {})
    headers.update({
        "rail.error": f"{type(error).__name__}: {error}",
        "rail.traceback": "".join(traceback.format_exception(error)),
        "rail.attempts": str(attempts),
        "rail.source.topic": event.topic,
        "rail.source.partition": str(event.partition),
        "rail.source.offset": str(event.offset),
    })
    return headers


def send_to_dlq(producer: Producer, event: Event, error: BaseException, attempts: int) -> None:
    """Queue ``event`` on its dead-letter topic (the caller flushes before committing)."""
    producer.send(dlq_topic(event.topic), event.value, key=event.key,
                  headers=dead_letter_headers(event, error, attempts))


def original_headers(headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """``headers`` without the ``rail.*`` ones (None when nothing is left)."""
    kept = {k: v for k, v in (headers or {}).items() if not k.startswith(HEADER_PREFIX)}
    return kept or None


def text(value: Any) -> str:
    """A header or value as text (bytes decoded, invalid UTF-8 replaced)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def header(event: Event, name: str) -> str | None:
    value = (event.headers or {}).get(name)
    return None if value is None else text(value)


def source_topic(event: Event) -> str:
    """Where a dead-lettered event came from (its header, else the name minus ``.dlq``)."""
    source = header(event, "rail.source.topic")
    if source is not None:
        return source
    return event.topic[:-len(SUFFIX)] if event.topic.endswith(SUFFIX) else event.topic


def replay_headers(event: Event) -> dict[str, Any]:
    """The headers a replayed dead letter is sent with: its own, plus where it came from."""
    headers = original_headers(event.headers) or {}
    headers[REPLAYED_FROM] = location(event.topic, event.partition, event.offset)
    return headers


# -- reading ----------------------------------------------------------------------------
_records = msgspec.msgpack.Decoder(list[p.WireRecord])


def fetch_range(conn: Connection, topic: str, partition: int, start: int, end: int,
                max_wait_ms: int = 0) -> list[Event]:
    """The events of ``topic[partition]`` from ``start`` up to (not including) ``end``."""
    events: list[Event] = []
    offset = start
    while offset < end:
        reply = conn.call(p.Fetch(topic=topic, partition=partition, offset=offset,
                                  max_wait_ms=max_wait_ms))
        got = events_of_fetch(reply)
        if not got:
            break
        events.extend(e for e in got if e.offset < end)
        offset = got[-1].offset + 1
    return events


def events_of_fetch(reply: p.FetchReply) -> list[Event]:
    """Decode a fetch reply's stored batches into events at or after its ``offset``."""
    out: list[Event] = []
    for base, ts, raw in reply.batches:
        for i, r in enumerate(_records.decode(raw)):
            if base + i >= reply.offset:
                out.append(Event(reply.topic, reply.partition, base + i, r.value, r.key,
                                 r.headers, ts if r.timestamp is None else r.timestamp))
    return out


def partitions(conn: Connection, topic: str) -> list[p.PartitionInfo] | None:
    """``topic``'s partitions with their start and end offsets, or None if it is missing."""
    try:
        return list(conn.call(p.Metadata(topics=[topic])).topics[0].partitions)
    except BrokerError as exc:
        if exc.code == "UNKNOWN_TOPIC":
            return None
        raise


def read_all(conn: Connection, topic: str) -> list[Event]:
    """Every event currently in ``topic``, partition by partition (fetch, not a group)."""
    events: list[Event] = []
    for info in partitions(conn, topic) or []:
        events.extend(fetch_range(conn, topic, info.partition, info.start_offset,
                                  info.end_offset))
    return events


# -- selecting --------------------------------------------------------------------------
@dataclass
class Selection:
    """Which dead letters a command is about; every field left empty selects all.

    ``offsets`` is an inclusive ``(first, last)`` with None for an open end.  ``error`` is
    a substring of the ``rail.error`` header, ``match`` one of the key or value as text.
    ``again`` includes dead letters already replayed."""

    partition: int | None = None
    offsets: tuple[int | None, int | None] | None = None
    error: str | None = None
    match: str | None = None
    again: bool = False

    @property
    def filtered(self) -> bool:
        """True when the selection looks at content, not only at positions."""
        return self.error is not None or self.match is not None

    def bounds(self, info: p.PartitionInfo) -> tuple[int, int]:
        """The offsets ``[lo, hi)`` of a partition that this selection covers."""
        first, last = self.offsets or (None, None)
        lo = info.start_offset if first is None else max(first, info.start_offset)
        hi = info.end_offset if last is None else min(last + 1, info.end_offset)
        return lo, max(lo, hi)

    def matches(self, event: Event) -> bool:
        if self.error is not None and self.error not in (header(event, "rail.error") or ""):
            return False
        if self.match is not None:
            shown = f"{_shown(event.key)} {_shown(event.value)}"
            return self.match in shown
        return True


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, str)):
        return text(value)
    return json.dumps(value, ensure_ascii=False, default=text)  # as ``rail dlq list`` shows it


def parse_offsets(spec: str) -> tuple[int | None, int | None]:
    """``A..B`` (inclusive), ``A..``, ``..B`` or ``A`` as ``(first, last)``."""
    first, dots, last = spec.partition("..")
    try:
        lo = int(first) if first else None
        hi = (int(last) if last else None) if dots else lo
    except ValueError:
        raise ValueError(f"offsets {spec!r}: write them as A..B, A.., ..B or A") from None
    if (lo is not None and lo < 0) or (hi is not None and hi < 0) or (
            lo is not None and hi is not None and hi < lo):
        raise ValueError(f"offsets {spec!r}: need 0 <= A <= B")
    return lo, hi


# -- the replay record: cursor and ledger -----------------------------------------------
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


def load_record(conn: Connection, dlq: str) -> ReplayRecord:
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


def _ledger_entry(producer: Producer, dead: Event, to: str | None) -> dict[str, Any]:
    entry = {"to": to, "ts": dead.timestamp, "at": int(time.time() * 1000)}
    producer.send(ledger_topic(dead.topic), entry, key=f"{dead.partition}@{dead.offset}")
    return entry


def _ensure_ledger(conn: Connection, dlq: str) -> None:
    conn.call(p.CreateTopic(topic=ledger_topic(dlq), partitions=1,
                            config={"cleanup_policy": "compact", "retention_ms": -1}, exist_ok=True))


def _source_ends(conn: Connection, topics: set[str]) -> dict[str, dict[str, int]]:
    ends: dict[str, dict[str, int]] = {}
    for topic in sorted(topics):
        ends[topic] = {str(i.partition): i.end_offset for i in partitions(conn, topic) or []}
    return ends


def recover(conn: Connection, producer: Producer, record: ReplayRecord) -> int:
    """Finish an interrupted replay: record as replayed whatever of it reached its source.

    The source topics are read from the end offsets the intent noted before anything was
    sent; a record there whose ``rail.replayed-from`` names this DLQ was sent by that
    replay.  Returns how many dead letters were found sent."""
    assert record.intent is not None
    sent: dict[tuple[int, int], str] = {}
    for topic, ends in (record.intent.get("sources") or {}).items():
        for info in partitions(conn, topic) or []:
            start = max(int(ends.get(str(info.partition), 0)), info.start_offset)
            for event in fetch_range(conn, topic, info.partition, start, info.end_offset):
                origin = parse_location(header(event, REPLAYED_FROM) or "")
                if origin is not None and origin[0] == record.dlq:
                    sent[origin[1], origin[2]] = location(topic, event.partition, event.offset)
    for dead in _dead_letters_at(conn, record.dlq, set(sent)):
        record.replayed[dead.partition, dead.offset] = _ledger_entry(
            producer, dead, sent[dead.partition, dead.offset])
    producer.send(ledger_topic(record.dlq), {"state": "done", "recovered": len(sent)},
                  key=INTENT_KEY)
    _flush(producer)
    record.intent = {"state": "done"}
    return len(sent)


def _dead_letters_at(conn: Connection, dlq: str, places: set[tuple[int, int]]) -> list[Event]:
    """The dead letters of ``dlq`` at these (partition, offset) places that still exist."""
    found: list[Event] = []
    for part in sorted({pl[0] for pl in places}):
        offsets = [off for pt, off in places if pt == part]
        found.extend(e for e in fetch_range(conn, dlq, part, min(offsets), max(offsets) + 1)
                     if (part, e.offset) in places)
    return found


def _flush(producer: Producer) -> None:
    producer.flush()
    if producer.errors:
        raise producer.errors[0]


# -- replaying --------------------------------------------------------------------------
@dataclass
class ReplayResult:
    dlq: str
    selected: list[Event] = field(default_factory=list)
    """The dead letters sent (or, on a dry run, that would be sent), in DLQ order."""
    sent_to: dict[tuple[int, int], str] = field(default_factory=dict)
    recovered: int = 0
    """Dead letters an interrupted earlier replay had sent, found and recorded now."""
    skipped: int = 0
    """Dead letters in the selection skipped because they had been replayed already."""


def candidates(conn: Connection, record: ReplayRecord, selection: Selection,
               result: ReplayResult) -> dict[int, int]:
    """Fill ``result.selected``; return the cursor each partition may move to."""
    moves: dict[int, int] = {}
    for info in partitions(conn, record.dlq) or []:
        if selection.partition is not None and info.partition != selection.partition:
            continue
        lo, hi = selection.bounds(info)
        cursor = max(record.cursors.get(info.partition, 0), info.start_offset)
        if not selection.again and selection.offsets is None and lo < cursor:
            if not selection.filtered:  # dead letters are dense: one per offset
                result.skipped += min(cursor, hi) - lo
            lo = min(cursor, hi)  # below the cursor everything is replayed
        for event in fetch_range(conn, record.dlq, info.partition, lo, hi):
            if not selection.matches(event):
                continue
            if not selection.again and record.is_replayed(event):
                result.skipped += 1
                continue
            result.selected.append(event)
        if not selection.filtered and lo <= cursor < hi:
            moves[info.partition] = hi
    return moves


def replay(broker: str, topic: str, selection: Selection | None = None,
           dry_run: bool = False) -> ReplayResult:
    """Send the selected dead letters of ``topic``'s DLQ back to their sources, each once.

    Raises ``BrokerError`` with code ``UNKNOWN_TOPIC`` when the DLQ does not exist."""
    selection = selection or Selection()
    dlq = dlq_name(topic)
    conn = Connection(broker, timeout_s=10.0)
    try:
        if partitions(conn, dlq) is None:
            raise BrokerError("UNKNOWN_TOPIC", f"there is no dead-letter topic {dlq}")
        with Producer(broker, acks="all") as producer:
            return _replay(conn, producer, dlq, selection, dry_run)
    finally:
        conn.close()


def _replay(conn: Connection, producer: Producer, dlq: str, selection: Selection,
            dry_run: bool) -> ReplayResult:
    result = ReplayResult(dlq)
    record = load_record(conn, dlq)
    if record.interrupted and not dry_run:
        result.recovered = recover(conn, producer, record)
    moves = candidates(conn, record, selection, result)
    if dry_run:
        return result
    if result.selected:
        _ensure_ledger(conn, dlq)
        _send_intent(conn, producer, dlq, result.selected)
        _send_replays(producer, result)
        _record_replays(producer, dlq, result)
    _move_cursor(conn, dlq, record, moves)
    return result


def _send_intent(conn: Connection, producer: Producer, dlq: str, events: list[Event]) -> None:
    """Durably note, before sending, where the source topics ended (see ``recover``)."""
    sources = _source_ends(conn, {source_topic(e) for e in events})
    producer.send(ledger_topic(dlq), {"state": "open", "sources": sources,
                                      "at": int(time.time() * 1000)}, key=INTENT_KEY)
    _flush(producer)


def _send_replays(producer: Producer, result: ReplayResult) -> None:
    for event in result.selected:
        def sent(partition: int, offset: int, error: BrokerError | None,
                 event: Event = event) -> None:
            if error is None:
                result.sent_to[event.partition, event.offset] = location(
                    source_topic(event), partition, offset)
        producer.send(source_topic(event), event.value, key=event.key,
                      headers=replay_headers(event), callback=sent)
    _flush(producer)


def _record_replays(producer: Producer, dlq: str, result: ReplayResult) -> None:
    for event in result.selected:
        _ledger_entry(producer, event, result.sent_to.get((event.partition, event.offset)))
    producer.send(ledger_topic(dlq), {"state": "done"}, key=INTENT_KEY)
    _flush(producer)


def _move_cursor(conn: Connection, dlq: str, record: ReplayRecord,
                 moves: dict[int, int]) -> None:
    """Commit the cursor forward; the ledger already covers what it would, so a commit
    refused (someone joined the reserved group) loses nothing."""
    offsets = [(dlq, part, to) for part, to in sorted(moves.items())
               if to > record.cursors.get(part, 0)]
    if not offsets:
        return
    try:
        conn.call(p.Commit(group=cursor_group(dlq), offsets=offsets))
    except BrokerError as exc:
        if exc.code not in ("NOT_MEMBER", "STALE_GENERATION"):
            raise


# -- purging ----------------------------------------------------------------------------
def purge(conn: Connection, topic: str, before: int | None,
          partition: int | None = None) -> dict[int, tuple[int, int]]:
    """Delete the DLQ's dead letters below ``before`` (None: all) in each partition.

    Returns ``{partition: (old start, new start)}``."""
    dlq = dlq_name(topic)
    infos = partitions(conn, dlq)
    if infos is None:
        raise BrokerError("UNKNOWN_TOPIC", f"there is no dead-letter topic {dlq}")
    moved: dict[int, tuple[int, int]] = {}
    for info in infos:
        if partition is not None and info.partition != partition:
            continue
        target = -1 if before is None else min(before, info.end_offset)
        if target != -1 and target <= info.start_offset:
            moved[info.partition] = (info.start_offset, info.start_offset)
            continue
        reply = conn.call(p.DeleteRecords(topic=dlq, partition=info.partition, offset=target))
        moved[info.partition] = (info.start_offset, reply.start_offset)
    return moved


__all__ = ["dlq_topic", "dlq_name", "ledger_topic", "cursor_group", "dead_letter_headers", "send_to_dlq",
           "original_headers", "replay_headers", "source_topic", "fetch_range",
           "events_of_fetch", "read_all", "load_record", "Selection", "parse_offsets",
           "ReplayRecord", "ReplayResult", "replay", "purge", "BrokerError"]
