"""``rail dlq list|replay|purge``: a topic's dead letters (see docs/dlq.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from runtime import dlq
from runtime.cli.common import (CommandError, UsageError, connect, event_json, guarded, plural,
                                print_json, set_handler, with_broker)
from runtime.client import Event
from runtime.dlq.lease import WAIT_S


def add_dlq_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``rail dlq list|replay|purge``."""
    ap = sub.add_parser("dlq", help="inspect, replay or purge a topic's dead letters",
                        description="Dead letters of TOPIC live in TOPIC.dlq; see docs/dlq.md.")
    inner = ap.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")
    _add_list(inner)
    _add_replay(inner)
    _add_purge(inner)


def _topic(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", help="the source topic (or its DLQ, NAME.dlq)")
    parser.add_argument("-p", "--partition", type=int, metavar="N",
                        help="only this partition of the DLQ")


def _add_list(inner: argparse._SubParsersAction) -> None:
    ap = with_broker(inner.add_parser(
        "list", help="show dead letters: source, attempts, error, value, replayed or not"))
    _topic(ap)
    ap.add_argument("--offset", "--offsets", dest="offsets", metavar="A..B",
                    help="only DLQ offsets A to B, inclusive (A.., ..B and A work too)")
    ap.add_argument("--grep", "--match", dest="match", metavar="TEXT",
                    help="only dead letters whose key or value contains TEXT")
    ap.add_argument("--error", metavar="TEXT", help="only dead letters whose error contains TEXT")
    ap.add_argument("--pending", action="store_true", help="only those not replayed yet")
    ap.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    set_handler(ap, guarded(cmd_dlq_list))


def _add_replay(inner: argparse._SubParsersAction) -> None:
    ap = with_broker(inner.add_parser(
        "replay", help="send dead letters back to their source topic, each at most once",
        description="Send the selected dead letters back to their source topic. A dead "
                    "letter already replayed is skipped unless --again is given."))
    _topic(ap)
    ap.add_argument("--offsets", "--offset", dest="offsets", metavar="A..B",
                    help="only DLQ offsets A to B, inclusive (A.., ..B and A work too)")
    ap.add_argument("--error", metavar="SUBSTRING",
                    help="only dead letters whose error contains SUBSTRING")
    ap.add_argument("--match", "--grep", dest="match", metavar="TEXT",
                    help="only dead letters whose key or value contains TEXT")
    ap.add_argument("--again", action="store_true",
                    help="replay dead letters that were replayed before too")
    ap.add_argument("--dry-run", action="store_true",
                    help="show what would be replayed, send nothing")
    ap.add_argument("--wait", type=float, default=WAIT_S, metavar="SECONDS",
                    help="how long to wait for another replay of the same DLQ to end "
                         "(default %(default)g)")
    set_handler(ap, guarded(cmd_dlq_replay))


def _add_purge(inner: argparse._SubParsersAction) -> None:
    ap = with_broker(inner.add_parser(
        "purge", help="delete dead letters for good (moves the DLQ's start offset)"))
    _topic(ap)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--before", type=int, metavar="OFFSET",
                       help="delete the dead letters below DLQ offset OFFSET")
    which.add_argument("--all", action="store_true", help="delete every dead letter")
    ap.add_argument("--yes", action="store_true", help="do it without asking")
    set_handler(ap, guarded(cmd_dlq_purge))


# -- list -------------------------------------------------------------------------------
def _selection(args: argparse.Namespace) -> dlq.Selection:
    try:
        offsets = dlq.parse_offsets(args.offsets) if args.offsets else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.partition is not None and args.partition < 0:
        raise UsageError(f"partition {args.partition}: need a number >= 0")
    return dlq.Selection(partition=args.partition, offsets=offsets,
                         error=args.error, match=args.match,
                         again=getattr(args, "again", False))


def _source(event: Event) -> dict[str, Any]:
    h = dlq.header
    part, off = h(event, "rail.source.partition"), h(event, "rail.source.offset")
    return {"topic": dlq.source_topic(event),
            "partition": int(part) if part and part.isdigit() else None,
            "offset": int(off) if off and off.isdigit() else None}


def dead_letter_json(event: Event, record: dlq.ReplayRecord) -> dict[str, Any]:
    attempts = dlq.header(event, "rail.attempts")
    return {**event_json(event), "source": _source(event),
            "attempts": int(attempts) if attempts and attempts.isdigit() else None,
            "error": dlq.header(event, "rail.error"),
            "replayed": record.is_replayed(event),
            "replayed_to": record.where(event),
            "refailure_of": dlq.header(event, dlq.REPLAYED_FROM)}


def dead_letter_line(d: dict[str, Any]) -> str:
    src = d["source"]
    where = dlq.location(src["topic"], src["partition"] if src["partition"] is not None else -1,
                         src["offset"] if src["offset"] is not None else -1)
    line = (f"  {dlq.location(d['topic'], d['partition'], d['offset'])}  {where} after "
            f"{d['attempts'] if d['attempts'] is not None else '?'} attempts: "
            f"{d['error'] or '?'}  value={json.dumps(d['value'], ensure_ascii=False)}")
    if d["refailure_of"]:
        line += f"  (re-failure of {d['refailure_of']})"
    if d["replayed"]:
        again = ", failed again as " + ", ".join(d["failed_again_as"]) if d.get(
            "failed_again_as") else ""
        line += f"  [replayed{' to ' + d['replayed_to'] if d['replayed_to'] else ''}{again}]"
    return line


def _link_refailures(shown: list[dict[str, Any]]) -> None:
    """Give each dead letter ``failed_again_as``: the dead letters its replays became."""
    by_place = {dlq.location(d["topic"], d["partition"], d["offset"]): d for d in shown}
    for d in shown:
        d["failed_again_as"] = []
    for d in shown:
        earlier = by_place.get(d["refailure_of"] or "")
        if earlier is not None:
            earlier["failed_again_as"].append(dlq.location(d["topic"], d["partition"], d["offset"]))


def cmd_dlq_list(args: argparse.Namespace) -> int:
    selection = _selection(args)
    name = dlq.dlq_name(args.topic)
    conn = connect(args)
    try:
        events = [e for e in dlq.read_all(conn, name) if selection.selects(e)]
        record = dlq.load_record(conn, name) if events else dlq.ReplayRecord(name)
    finally:
        conn.close()
    shown = [dead_letter_json(e, record) for e in events]
    _link_refailures(shown)
    if args.pending:
        shown = [d for d in shown if not d["replayed"]]
    if args.json:
        print_json(shown)
        return 0
    replayed = sum(d["replayed"] for d in shown)
    refailed = sum(bool(d["refailure_of"]) for d in shown)
    print(f"{plural(len(shown), 'dead letter')} in {name}: {replayed:,} replayed, "
          f"{len(shown) - replayed:,} not replayed"
          + (f", {refailed:,} of them re-failures of a replayed one" if refailed else ""))
    for d in shown:
        print(dead_letter_line(d))
    return 0


# -- replay -----------------------------------------------------------------------------
def cmd_dlq_replay(args: argparse.Namespace) -> int:
    selection = _selection(args)
    result = dlq.replay(args.broker, args.topic, selection, dry_run=args.dry_run,
                        wait_s=args.wait)
    if result.recovered:
        print(f"an interrupted replay had sent {plural(result.recovered, 'dead letter')}: "
              + ("a replay will record them as replayed" if args.dry_run
                 else "recorded them as replayed"), file=sys.stderr)
    skipped = (f" ({plural(result.skipped, 'dead letter')} replayed before skipped: "
               "--again replays them)") if result.skipped else ""
    count = plural(len(result.selected), "dead letter")
    if args.dry_run:
        record = dlq.ReplayRecord(result.dlq)
        for event in result.selected:
            print(dead_letter_line(dead_letter_json(event, record)))
        print(f"would replay {count} from {result.dlq}{skipped}; dry run, nothing sent",
              file=sys.stderr)
        return 0
    targets = sorted({dlq.source_topic(e) for e in result.selected})
    print(f"replayed {count} from {result.dlq}"
          + (f" to {', '.join(targets)}" if targets else "") + skipped, file=sys.stderr)
    return 0


# -- purge ------------------------------------------------------------------------------
def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    name = dlq.dlq_name(args.topic)
    conn = connect(args)
    try:
        infos = dlq.partitions(conn, name)
    finally:
        conn.close()
    if infos is None:
        raise CommandError(f"there is no dead-letter topic {name}")
    if args.partition is not None and args.partition not in {i.partition for i in infos}:
        raise UsageError(f"{name} has no partition {args.partition} (it has {len(infos)})")
    if args.before is not None and args.before < 0:
        raise UsageError(f"--before {args.before}: need an offset >= 0")
    doomed = sum(max(0, (i.end_offset if args.all else min(args.before, i.end_offset))
                     - i.start_offset)
                 for i in infos if args.partition in (None, i.partition))
    what = f"{plural(doomed, 'dead letter')} of {name}"
    if not args.yes and not _confirm(f"delete {what} for good?"):
        print(f"rail dlq purge: would delete {what}; nothing deleted: add --yes",
              file=sys.stderr)
        return 1
    moved = dlq.purge(args.broker, name, None if args.all else args.before, args.partition)
    deleted = sum(new - old for old, new in moved.values())
    print(f"purged {plural(deleted, 'dead letter')} from {name}; start offsets now "
          + ", ".join(f"[{part}]@{new}" for part, (_, new) in sorted(moved.items())),
          file=sys.stderr)
    return 0


__all__ = ["add_dlq_commands", "cmd_dlq_list", "cmd_dlq_replay", "cmd_dlq_purge",
           "dead_letter_json"]
