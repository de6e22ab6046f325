"""``rail dlq``: a topic's dead letters."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from brokerd import protocol as p
from runtime import dlq
from runtime.cli.common import connect, event_json, guarded, jsonable, print_json, set_handler, with_broker
from runtime.client import Event


def add_dlq_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``rail dlq list|replay``."""
    _add_dlq(sub)


# -- dlq ------------------------------------------------------------------------------
def _add_dlq(sub: argparse._SubParsersAction) -> None:
    ap = sub.add_parser("dlq", help="inspect or replay a topic's dead letters")
    inner = ap.add_subparsers(dest="dlq_action", required=True)
    listing = with_broker(inner.add_parser("list", help="show TOPIC.dlq with the errors"))
    listing.add_argument("topic")
    listing.add_argument("--json", action="store_true")
    set_handler(listing, guarded(cmd_dlq_list))
    again = with_broker(inner.add_parser("replay", help="send TOPIC.dlq back to TOPIC"))
    again.add_argument("topic")
    set_handler(again, guarded(cmd_dlq_replay))


def _dlq_name(topic: str) -> str:
    return topic if topic.endswith(dlq.SUFFIX) else dlq.dlq_topic(topic)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        name = _dlq_name(args.topic)
        if name not in {t.name for t in conn.call(p.Metadata()).topics}:
            events: list[Event] = []
        else:
            events = dlq.read_all(conn, name)
    finally:
        conn.close()
    if args.json:
        print_json([event_json(e) for e in events])
        return 0
    print(f"{len(events)} dead letters in {name}")
    for e in events:
        h = e.headers or {}
        src = (f"{_text(h.get('rail.source.topic', '?'))}[{_text(h.get('rail.source.partition', '?'))}]"
               f"@{_text(h.get('rail.source.offset', '?'))}")
        print(f"  {src} after {_text(h.get('rail.attempts', '?'))} attempts: "
              f"{_text(h.get('rail.error', '?'))}  value={json.dumps(jsonable(e.value))}")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    count = dlq.replay(args.broker, _dlq_name(args.topic))
    print(f"replayed {count} events from {_dlq_name(args.topic)}", file=sys.stderr)
    return 0


