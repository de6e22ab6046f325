"""``rail tail``: print a topic's events, kcat -C style (partition, offset, time, format).

Without ``--group`` it reads with ``fetch`` and commits nothing; with ``--group`` it is a
member of that group and commits what it printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any


from brokerd import protocol as p
from runtime.cli.common import (
    CommandError, UsageError, connect, event_json, event_line, guarded, jsonable, parse_time, plural,
    set_handler, with_broker,
)
from runtime.client import Consumer, Event, events_of_fetch
from runtime.connection import Connection
from runtime.routing import Link

TAIL_LAST = 10  # without -o or --from-beginning, tail shows this many last events per partition
FOLLOW_WAIT_MS = 500
GROUP_QUIET_S = 15.0  # --group without --follow: give up when nothing comes this long short of the end
Render = Callable[[Event], bytes]


def add_tail(sub: argparse._SubParsersAction) -> None:
    ap = with_broker(sub.add_parser(
        "tail", help="print a topic's events",
        description="Print the last 10 events of each partition of TOPIC (or from -o, "
        "--from-time, --from-beginning) and exit at the end, or wait for more with --follow."))
    ap.add_argument("topic", help="the topic to read")
    ap.add_argument("-p", "--partition", type=_non_negative, metavar="N",
                    help="read only this partition")
    start = ap.add_mutually_exclusive_group()
    start.add_argument("-o", "--offset", metavar="OFFSET",
                       help="where to start in each partition: beginning, end, an offset N, "
                       "or -N for the last N events (default -10)")
    start.add_argument("--from-beginning", action="store_true",
                       help="start at the first event (same as -o beginning)")
    start.add_argument("--from-time", metavar="TIME",
                       help="start at the first event at or after TIME: ISO-8601 "
                       "(2026-11-29T20:00:00Z; local time without a zone) or ms since the epoch")
    ap.add_argument("-c", "--count", type=_positive_int, metavar="N",
                    help="exit after printing N events")
    end = ap.add_mutually_exclusive_group()
    end.add_argument("-f", "--follow", action="store_true",
                     help="keep waiting for new events (Ctrl-C to stop)")
    end.add_argument("-e", "--exit", action="store_true",
                     help="exit at the end of the partitions (the default without --follow)")
    ap.add_argument("--group", help="read as a member of this consumer group, from its "
                    "committed offsets, and commit what was printed")
    shape = ap.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="one JSON object per event and line")
    shape.add_argument("--format", metavar="FMT",
                       help="kcat-style format: %%t topic, %%p partition, %%o offset, %%k key, "
                       "%%s value, %%h headers, %%T timestamp (ms), %%%% a %%; \\n \\t \\r "
                       "\\\\ escapes; no newline is added (e.g. '%%k: %%s\\n')")
    set_handler(ap, guarded(cmd_tail))


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def cmd_tail(args: argparse.Namespace) -> int:
    render = _renderer(args)
    if args.group:
        if args.partition is not None or args.offset or args.from_time:
            raise UsageError("--group reads from the group's committed offsets: drop -p, "
                             "-o and --from-time, or drop --group")
        return _tail_group(args, render)
    conn = connect(args)
    try:
        return _tail(conn, args, render)
    finally:
        conn.close()


# -- reading --------------------------------------------------------------------------
def _tail(conn: Connection, args: argparse.Namespace, render: Render) -> int:
    meta = conn.call(p.Metadata(topics=[args.topic])).topics[0]
    parts = meta.partitions
    if args.partition is not None:
        parts = [i for i in parts if i.partition == args.partition]
        if not parts:
            raise UsageError(f"topic {args.topic} has {plural(len(meta.partitions), 'partition')}"
                             f": -p takes 0 to {len(meta.partitions) - 1}")
    positions = {i.partition: _start(conn, args, i) for i in parts}
    ends = {i.partition: i.end_offset for i in parts}
    out, shown = sys.stdout.buffer, 0
    while positions:
        events = _fetch_round(conn, args.topic, positions, FOLLOW_WAIT_MS if args.follow else 0)
        for event in events:
            if not args.follow and event.offset >= ends[event.partition]:
                continue
            out.write(render(event))
            shown += 1
            if shown == args.count:
                out.flush()
                return 0
        out.flush()
        if not args.follow:
            got = {e.partition for e in events}
            positions = {k: v for k, v in positions.items() if k in got and v < ends[k]}
    return 0


def _start(conn: Connection, args: argparse.Namespace, info: p.PartitionInfo) -> int:
    """Where to start reading one partition, within [start_offset, end_offset]."""
    first, end = info.start_offset, info.end_offset
    if args.from_time:
        ts = parse_time(args.from_time)
        return int(conn.call(p.ListOffsets(topic=args.topic, partition=info.partition,
                                           timestamp=ts)).offset)
    spec = "beginning" if args.from_beginning else (args.offset or f"-{TAIL_LAST}")
    if spec == "beginning":
        return first
    if spec == "end":
        return end
    if re.fullmatch(r"-\d+", spec):
        return max(first, end - int(spec[1:]))
    if spec.isdigit():
        return min(max(first, int(spec)), end)
    raise UsageError(f"-o {spec!r}: give beginning, end, an offset N or -N (the last N)")


def _fetch_round(conn: Connection, topic: str, positions: dict[int, int],
                 wait_ms: int) -> list[Event]:
    """One pipelined fetch per partition; advance ``positions``; events in partition order."""
    ids = {part: conn.send(p.Fetch(topic=topic, partition=part, offset=off, max_wait_ms=wait_ms))
           for part, off in positions.items()}
    events: list[Event] = []
    for part, rid in ids.items():
        reply = conn.wait(rid, timeout_s=wait_ms / 1000 + 5)
        got = events_of_fetch(reply)
        if got:
            positions[part] = got[-1].offset + 1
            events.extend(got)
    return events




def _tail_group(args: argparse.Namespace, render: Render) -> int:
    start = "earliest" if args.from_beginning else "latest"
    out, shown = sys.stdout.buffer, 0
    admin = connect(args)
    try:
        # Without --follow: the end is each partition's end now (an empty poll is not it:
        # joining, or finding a new leader after a failover, can take longer than a poll).
        ends = None if args.follow else {
            i.partition: (i.start_offset, i.end_offset)
            for i in admin.call(p.Metadata(topics=[args.topic])).topics[0].partitions}
        with Consumer(args.broker, group=args.group, topics=[args.topic], start=start,
                      client_id="rail-tail", timeout_s=5.0) as consumer:
            quiet_since = time.monotonic()
            while True:
                events = consumer.poll(timeout_s=1.0)
                done: dict[tuple[str, int], int] = {}
                for event in events[:None if args.count is None else args.count - shown]:
                    out.write(render(event))
                    done[(event.topic, event.partition)] = event.offset + 1
                    shown += 1
                out.flush()
                if done:
                    consumer.commit(done)
                if shown == args.count:
                    return 0
                if events or ends is None:
                    quiet_since = time.monotonic()
                elif _read_to_end(consumer, admin, args, ends):
                    return 0
                elif time.monotonic() - quiet_since > GROUP_QUIET_S:
                    raise CommandError(
                        f"group {args.group}: nothing more came for {GROUP_QUIET_S:.0f} s "
                        f"before the end of {args.topic} (its partitions {sorted(ends)} end at "
                        f"{[e for _, e in ends.values()]}): is a partition without a leader?")
    finally:
        admin.close()


def _read_to_end(consumer: Consumer, admin: Link, args: argparse.Namespace,
                 ends: dict[int, tuple[int, int]]) -> bool:
    """Every partition this member was given is read up to its end as of the start: its
    position, else the group's committed offset, else where ``start`` puts it."""
    mine = [tp for tp in consumer.assignment if tp[0] == args.topic and tp[1] in ends]
    if not mine:
        return False  # not given partitions yet (or all went to other members: they wait)
    reply = admin.call(p.DescribeGroup(group=args.group))
    committed = {(x.topic, x.partition): x.committed for x in reply.partitions}
    for tp in mine:
        first, end = ends[tp[1]]
        position = consumer.positions.get(tp, committed.get(tp))
        if position is None:
            position = first if args.from_beginning else end
        if position < end:
            return False
    return True


# -- writing --------------------------------------------------------------------------
def _renderer(args: argparse.Namespace) -> Render:
    if args.json:
        return lambda e: (json.dumps(event_json(e), ensure_ascii=False) + "\n").encode()
    if args.format is not None:
        return compile_format(args.format)
    return lambda e: (event_line(e) + "\n").encode(errors="backslashreplace")


_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\"}
_FIELDS: dict[str, Callable[[Event], bytes]] = {
    "t": lambda e: e.topic.encode(),
    "p": lambda e: str(e.partition).encode(),
    "o": lambda e: str(e.offset).encode(),
    "T": lambda e: str(e.timestamp).encode(),
    "k": lambda e: raw_bytes(e.key),
    "s": lambda e: raw_bytes(e.value),
    "h": lambda e: b",".join(k.encode() + b"=" + raw_bytes(v)
                             for k, v in (e.headers or {}).items()),
}


def compile_format(fmt: str) -> Render:
    """A kcat ``-f`` format as a function of an event: its fields and escapes resolved once."""
    parts: list[bytes | Callable[[Event], bytes]] = []
    for token in re.findall(r"%.?|\\.?|[^%\\]+", fmt, re.S):
        if token[0] == "%" and token[1:] in _FIELDS:
            parts.append(_FIELDS[token[1:]])
        elif token == "%%":
            parts.append(b"%")
        elif token[0] == "\\" and token[1:] in _ESCAPES:
            parts.append(_ESCAPES[token[1:]])
        elif token[0] in "%\\":
            raise UsageError(f"--format: unknown {token!r}: use %t %p %o %k %s %h %T %% "
                             "and \\n \\t \\r \\\\")
        else:
            parts.append(token.encode(errors="surrogateescape"))

    def render(event: Event) -> bytes:
        return b"".join(x if isinstance(x, bytes) else x(event) for x in parts)
    return render


def raw_bytes(value: Any) -> bytes:
    """A key, value or header as kcat prints it: bytes as they are, text as UTF-8, nothing
    for nil, anything else (a msgpack map, number, ...) as compact JSON."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode(errors="surrogateescape")
    return json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":")).encode()
