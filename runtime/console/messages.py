"""The message browser: a page of records from a position, or a search by key or value.

A position is per partition (``cursor``: ``{partition: next offset}``), so a page can go on
where the last one stopped, in one partition or across all of them, with no ceiling on how
far: each request reads at most ``limit`` records to show and ``SCAN_BUDGET`` to search,
and returns the cursor to continue from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from brokerd import protocol as p
from runtime.client import Event, events_of_fetch
from runtime.connection import Connection
from runtime.console.decoding import MODES, as_text, jsonable, shown

MAX_LIMIT = 1000
SCAN_BUDGET = 50_000  # records one search request reads before it answers "more"
POSITIONS = ("start", "end", "offset", "timestamp")


class QueryError(ValueError):
    """A browser request that cannot be answered as asked; the message says why."""


@dataclass
class Query:
    topic: str
    partitions: list[int] | None = None  # None: every partition
    position: str = "end"
    offset: int = 0
    timestamp: int = 0
    limit: int = 50
    key: str = ""
    value: str = ""
    decode: str = "auto"
    cursor: dict[int, int] | None = None  # given: continue from here, ``position`` ignored

    @property
    def searching(self) -> bool:
        return bool(self.key or self.value)


@dataclass
class Page:
    messages: list[dict[str, Any]] = field(default_factory=list)
    cursor: dict[int, int] = field(default_factory=dict)
    previous: dict[int, int] | None = None
    scanned: int = 0
    more: bool = False
    bounds: dict[int, tuple[int, int]] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {"messages": self.messages, "cursor": _cursor_text(self.cursor),
                "previous": None if self.previous is None else _cursor_text(self.previous),
                "scanned": self.scanned, "more": self.more,
                "partitions": {str(k): {"start": a, "end": b} for k, (a, b) in
                               sorted(self.bounds.items())}}


def parse_query(topic: str, args: dict[str, str]) -> Query:
    """A Query from the page's URL parameters; QueryError names the bad one."""
    q = Query(topic)
    q.position = args.get("from", "end")
    if q.position not in POSITIONS:
        raise QueryError(f"from={q.position!r}: use one of {', '.join(POSITIONS)}")
    q.offset = _int(args, "offset", 0, 0)
    q.timestamp = _int(args, "timestamp", 0, 0)
    q.limit = _int(args, "limit", 50, 1, MAX_LIMIT)
    q.key, q.value = args.get("key", ""), args.get("value", "")
    q.decode = args.get("decode", "auto")
    if q.decode not in MODES:
        raise QueryError(f"decode={q.decode!r}: use one of {', '.join(MODES)}")
    spec = args.get("partition", "all")
    if spec not in ("", "all"):
        q.partitions = [_int({"partition": s}, "partition", 0, 0) for s in spec.split(",")]
    if args.get("cursor"):
        q.cursor = parse_cursor(args["cursor"])
    return q


def _int(args: dict[str, str], name: str, default: int, lo: int, hi: int | None = None) -> int:
    text = args.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise QueryError(f"{name}={text!r} is not a whole number") from None
    if value < lo or (hi is not None and value > hi):
        raise QueryError(f"{name}={value} is out of range ({lo}.." + (f"{hi})" if hi else ")"))
    return value


def parse_cursor(text: str) -> dict[int, int]:
    """``"0:12,3:40"`` as ``{0: 12, 3: 40}``."""
    cursor = {}
    for part in text.split(","):
        a, sep, b = part.partition(":")
        if not sep or not a.isdigit() or not b.isdigit():
            raise QueryError(f"cursor {text!r}: write it as partition:offset,...")
        cursor[int(a)] = int(b)
    return cursor


def _cursor_text(cursor: dict[int, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(cursor.items()))


def browse(conn: Connection, q: Query) -> Page:
    """Answer ``q`` with fetches of the topic's partitions (run on the gateway's thread).
    In a cluster each partition is read from its leader (``metadata`` names it)."""
    meta = conn.call(p.Metadata(topics=[q.topic]))
    known = {i.partition: i for i in meta.topics[0].partitions}
    chosen = q.partitions if q.partitions is not None else sorted(known)
    for part in chosen:
        if part not in known:
            raise QueryError(f"{q.topic} has no partition {part} (it has {len(known)})")
    leaders = Leaders(conn, {b.id: b.api for b in meta.brokers})
    try:
        known = {i: leaders.fresh(q.topic, known[i]) for i in chosen}
        page = Page(bounds={i: (known[i].start_offset, known[i].end_offset) for i in chosen})
        start = q.cursor if q.cursor is not None else {
            i: _start(leaders.of(known[i]), q, known[i]) for i in chosen}
        page.previous = _previous(q, start, page.bounds)
        for part in chosen:
            lo, hi = page.bounds[part]
            offset = min(max(start.get(part, hi), lo), hi)
            offset = _scan(leaders.of(known[part]), q, part, offset, hi, page)
            if offset < hi:
                page.cursor[part] = offset
    finally:
        leaders.close()
    page.more = bool(page.cursor)
    return page


class Leaders:
    """The connection to read a partition from: the console's own, or one to the partition's
    leader when that is another broker of a cluster (opened for one request)."""

    def __init__(self, conn: Connection, apis: dict[int, str]) -> None:
        self.conn = conn
        self.apis = apis
        self.others: dict[str, Connection] = {}

    def of(self, info: p.PartitionInfo) -> Connection:
        api = self.apis.get(info.leader)
        if api is None or api == self.conn.endpoint:
            return self.conn
        if api not in self.others:
            self.others[api] = Connection(api, timeout_s=self.conn.timeout_s)
        return self.others[api]

    def fresh(self, topic: str, info: p.PartitionInfo) -> p.PartitionInfo:
        """The partition's offsets as its leader knows them (a follower's may lag)."""
        link = self.of(info)
        if link is self.conn:
            return info
        parts = link.call(p.Metadata(topics=[topic])).topics[0].partitions
        return next((x for x in parts if x.partition == info.partition), info)

    def close(self) -> None:
        for other in self.others.values():
            other.close()


def _start(conn: Connection, q: Query, info: p.PartitionInfo) -> int:
    match q.position:
        case "start":
            return info.start_offset
        case "end":  # the last page (a search from the end has nothing left to read)
            return info.end_offset if q.searching else max(info.start_offset,
                                                            info.end_offset - q.limit)
        case "offset":
            return q.offset
    reply = conn.call(p.ListOffsets(topic=q.topic, partition=info.partition,
                                    timestamp=q.timestamp))
    return int(reply.offset)


def _previous(q: Query, start: dict[int, int], bounds: dict[int, tuple[int, int]]
              ) -> dict[int, int] | None:
    """Where the page before this one starts: browsing one partition only."""
    if q.searching or len(bounds) != 1:
        return None
    (part, (lo, _hi)), = bounds.items()
    here = start.get(part, lo)
    return {part: max(lo, here - q.limit)} if here > lo else None


def _scan(conn: Connection, q: Query, part: int, offset: int, end: int, page: Page) -> int:
    """Read from ``offset`` until the page is full, the budget spent, or ``end``; return
    where the next read starts."""
    while offset < end and len(page.messages) < q.limit and page.scanned < SCAN_BUDGET:
        reply = conn.call(p.Fetch(topic=q.topic, partition=part, offset=offset))
        events = events_of_fetch(reply)
        if not events:
            break
        for event in events:
            if event.offset >= end:
                return end
            offset = event.offset + 1
            page.scanned += 1
            if _matches(q, event):
                page.messages.append(message_json(event, q.decode))
                if len(page.messages) >= q.limit:
                    return offset
    return offset


def _matches(q: Query, event: Event) -> bool:
    if q.key and q.key not in as_text(event.key):
        return False
    return not q.value or q.value in as_text(event.value)


def message_json(event: Event, mode: str) -> dict[str, Any]:
    return {"partition": event.partition, "offset": event.offset, "timestamp": event.timestamp,
            "key": shown(event.key, "auto" if mode == "msgpack" else mode),
            "value": shown(event.value, mode),
            "headers": jsonable(event.headers or {})}
