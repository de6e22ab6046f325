"""``rail groups``: list groups, describe one with its lag, reset its offsets, delete it
(kafka-consumer-groups)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Any

from brokerd import protocol as p
from runtime.cli.common import (
    CommandError, UsageError, connect, guarded, leaf, parse_time, plural, print_json, set_handler,
    with_broker, with_json,
)
from runtime.connection import BrokerError, Connection


def add_groups(sub: argparse._SubParsersAction) -> None:
    ap = with_json(with_broker(sub.add_parser(
        "groups", help="list consumer groups, describe, reset offsets, delete",
        description="Without an action: list the groups with their state and lag.")),
        "the groups")
    set_handler(ap, guarded(cmd_groups_list, "groups"))
    inner = ap.add_subparsers(dest="groups_action", metavar="ACTION")

    listing = leaf(inner, "list", "list the groups with their state, members and lag")
    with_json(listing, "the groups", inherited=True)
    set_handler(listing, guarded(cmd_groups_list, "groups list"))

    describe = leaf(inner, "describe", "a group's members, partitions, committed offsets, lag")
    describe.add_argument("name", help="the group")
    with_json(describe, "the group", inherited=True)
    set_handler(describe, guarded(cmd_groups_describe, "groups describe"))

    _add_reset(inner)

    delete = leaf(inner, "delete", "forget a group without live members and its offsets")
    delete.add_argument("name", help="the group")
    set_handler(delete, guarded(cmd_groups_delete, "groups delete"))


def _add_reset(inner: argparse._SubParsersAction) -> None:
    ap = leaf(inner, "reset-offsets", "move a stopped group's committed offsets: prints "
               "the plan, changes nothing without --execute")
    ap.add_argument("name", help="the group (it must have no live members to --execute)")
    ap.add_argument("--topic", required=True, help="the topic whose offsets to move")
    ap.add_argument("--partition", type=int, metavar="N",
                    help="only this partition (default: every partition of the topic)")
    to = ap.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true",
                    help="to each partition's first event")
    to.add_argument("--to-latest", action="store_true",
                    help="to each partition's end (skip everything there is)")
    to.add_argument("--to-time", metavar="TIME",
                    help="to the first event at or after TIME: ISO-8601 or ms since the epoch")
    to.add_argument("--to-offset", type=int, metavar="N", help="to offset N")
    to.add_argument("--shift-by", type=int, metavar="N",
                    help="by N from the committed offset (negative: back), from the "
                    "partition's start where none is committed")
    ap.add_argument("--execute", action="store_true",
                    help="commit the new offsets (without it: a dry run)")
    with_json(ap, "the plan", inherited=True)
    set_handler(ap, guarded(cmd_groups_reset_offsets, "groups reset-offsets"))


# -- list, describe, delete -----------------------------------------------------------
def group_json(reply: p.DescribeGroupReply) -> dict[str, Any]:
    return {"group": reply.group, "state": reply.state, "generation": reply.generation,
            "members": [{"member_id": m.member_id, "client_id": m.client_id,
                         "topics": m.topics, "assignment": [list(a) for a in m.assignment],
                         "last_seen_ms_ago": m.last_seen_ms_ago} for m in reply.members],
            "partitions": [{"topic": gp.topic, "partition": gp.partition,
                            "committed": gp.committed, "end_offset": gp.end_offset,
                            "lag": gp.lag, "owner": gp.owner} for gp in reply.partitions],
            "lag": sum(gp.lag for gp in reply.partitions)}


def cmd_groups_list(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        names = conn.call(p.ListGroups()).groups
        described = [group_json(conn.call(p.DescribeGroup(group=g))) for g in names]
    finally:
        conn.close()
    if args.json:
        print_json(described)
        return 0
    print(f"{'GROUP':30} {'STATE':12} {'MEMBERS':>7} {'LAG':>10}")
    for g in described:
        print(f"{g['group']:30} {g['state']:12} {len(g['members']):>7} {g['lag']:>10}")
    return 0


def _known(conn: Connection, group: str) -> None:
    """Raise unless the broker knows ``group`` (describe_group answers any name)."""
    if group not in conn.call(p.ListGroups()).groups:
        raise CommandError(f"no group {group}: rail groups lists the groups there are")


def cmd_groups_describe(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        _known(conn, args.name)
        g = group_json(conn.call(p.DescribeGroup(group=args.name)))
    finally:
        conn.close()
    if args.json:
        print_json(g)
        return 0
    print(f"group {g['group']}: {g['state']}, generation {g['generation']}, "
          f"{plural(len(g['members']), 'member')}, lag {g['lag']:,}")
    for m in g["members"]:
        parts = ",".join(f"{t}[{n}]" for t, n in m["assignment"]) or "-"
        print(f"  member {m['member_id']} ({m['client_id'] or '-'}): {parts}")
    print(f"{'TOPIC':24} {'PARTITION':>9} {'COMMITTED':>10} {'END':>10} {'LAG':>8}  OWNER")
    for x in g["partitions"]:
        committed = "-" if x["committed"] is None else x["committed"]
        print(f"{x['topic']:24} {x['partition']:>9} {committed:>10} {x['end_offset']:>10} "
              f"{x['lag']:>8}  {x['owner'] or '-'}")
    return 0


def cmd_groups_delete(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        conn.call(p.DeleteGroup(group=args.name))
    except BrokerError as exc:
        if exc.code == "GROUP_NOT_EMPTY":
            raise CommandError(f"group {args.name} has live members: stop them first "
                               "(rail down, or stop the consumers), then delete it") from None
        if exc.code == "UNKNOWN_GROUP":
            raise CommandError(f"no group {args.name}: rail groups lists the groups "
                               "there are") from None
        raise
    finally:
        conn.close()
    print(f"deleted group {args.name}")
    return 0


# -- reset-offsets --------------------------------------------------------------------
@dataclass
class Move:
    """One partition's line of a reset plan."""

    topic: str
    partition: int
    current: int | None  # the committed offset, None when nothing was committed
    new: int


def cmd_groups_reset_offsets(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        group = conn.call(p.DescribeGroup(group=args.name))
        live = len(group.members)
        if live and args.execute:
            raise _live_members(args.name, live)
        plan = _plan(conn, args, group)
        _show_plan(plan, args)
        if live:
            print(f"note: group {args.name} has {plural(live, 'live member')}: --execute "
                  "will be refused until they stop", file=sys.stderr)
        if not args.execute:
            print("dry run: nothing changed; add --execute to commit these offsets",
                  file=sys.stderr)
            return 0
        _commit(conn, args.name, plan)
    finally:
        conn.close()
    print(f"reset {plural(len(plan), 'partition')} of group {args.name}", file=sys.stderr)
    return 0


def _live_members(group: str, live: int | None = None) -> CommandError:
    members = "live members" if live is None else plural(live, "live member")
    return CommandError(f"group {group} has {members}: stop them (rail down, rail scale "
                        "NAME 0, or the consumers), wait for the group to be empty "
                        "(rail groups describe), then run this again")


def _plan(conn: Connection, args: argparse.Namespace, group: p.DescribeGroupReply) -> list[Move]:
    parts = conn.call(p.Metadata(topics=[args.topic])).topics[0].partitions
    if args.partition is not None:
        parts = [i for i in parts if i.partition == args.partition]
        if not parts:
            raise UsageError(f"topic {args.topic} has no partition {args.partition}")
    committed = {(gp.topic, gp.partition): gp.committed for gp in group.partitions}
    ts = None if args.to_time is None else parse_time(args.to_time)
    plan = []
    for info in parts:
        current = committed.get((args.topic, info.partition))
        new = _target(conn, args, info, current, ts)
        plan.append(Move(args.topic, info.partition, current,
                         min(max(new, info.start_offset), info.end_offset)))
    return plan


def _target(conn: Connection, args: argparse.Namespace, info: p.PartitionInfo,
            current: int | None, ts: int | None) -> int:
    """The offset asked for, before it is clamped to the partition's [start, end]."""
    if args.to_earliest:
        return info.start_offset
    if args.to_latest:
        return info.end_offset
    if ts is not None:
        reply = conn.call(p.ListOffsets(topic=args.topic, partition=info.partition,
                                        timestamp=ts))
        return int(reply.offset)
    if args.to_offset is not None:
        return int(args.to_offset)
    base = info.start_offset if current is None else current
    return base + int(args.shift_by)


def _show_plan(plan: list[Move], args: argparse.Namespace) -> None:
    if args.json:
        print_json([asdict(m) for m in plan])
        return
    print(f"{'TOPIC':24} {'PARTITION':>9} {'CURRENT':>10} {'NEW':>10}")
    for m in plan:
        current = "-" if m.current is None else m.current
        print(f"{m.topic:24} {m.partition:>9} {current:>10} {m.new:>10}")


def _commit(conn: Connection, group: str, plan: list[Move]) -> None:
    """Commit as a tool (no member id): the broker refuses while the group has members."""
    try:
        conn.call(p.Commit(group=group, offsets=[(m.topic, m.partition, m.new) for m in plan]))
    except BrokerError as exc:
        if exc.code == "NOT_MEMBER":
            raise _live_members(group) from None
        raise
