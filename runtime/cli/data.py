"""``rail send``, ``tail``, ``topics``, ``groups`` and ``run``: Kafka's console tools."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from brokerd import protocol as p
from runtime import dlq
from runtime.cli.common import (
    connect, event_json, event_line, guarded, parse_pairs, parse_value, print_json,
    set_handler, with_broker,
)
from runtime.client import Consumer, Event, Producer
from runtime.connection import Connection

TAIL_LAST = 10  # without --from-beginning, tail shows this many last events per partition
PROGRESS_EVERY_S = 0.5


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add send, tail, topics, groups and run to the ``rail`` parser."""
    for add in (_add_send, _add_tail, _add_topics, _add_groups, _add_run):
        add(subparsers)


# -- send -----------------------------------------------------------------------------
def _add_send(sub: argparse._SubParsersAction) -> None:
    ap = with_broker(sub.add_parser("send", help="send one event, or one per line of a file",
                                     description="Send VALUE (JSON if it parses, else bytes) "
                                     "or each line of --file to TOPIC."))
    ap.add_argument("topic")
    ap.add_argument("value", nargs="?")
    ap.add_argument("--key", help="event key (events with one key keep their order)")
    ap.add_argument("--header", action="append", default=[], metavar="K=V")
    ap.add_argument("--file", help="send each line of this file ('-' for stdin)")
    set_handler(ap, guarded(cmd_send))


def cmd_send(args: argparse.Namespace) -> int:
    if (args.value is None) == (args.file is None):
        print("rail send: give either a VALUE or --file F (one event per line)", file=sys.stderr)
        return 2
    headers = parse_pairs(args.header, "header") or None
    if args.file is None:
        return _send_one(args, parse_value(args.value), headers)
    return _send_file(args, headers)


def _send_one(args: argparse.Namespace, value: Any, headers: dict[str, Any] | None) -> int:
    where: list[tuple[int, int]] = []
    with Producer(args.broker, request_timeout_s=5.0, delivery_timeout_s=10.0) as producer:
        producer.send(args.topic, value, key=args.key, headers=headers,
                      callback=lambda part, off, err: where.append((part, off)))
        producer.flush(10.0)
        _raise_first(producer)
    if where:
        print(f"sent to {args.topic}[{where[0][0]}]@{where[0][1]}", file=sys.stderr)
    return 0


def _raise_first(producer: Producer) -> None:
    if producer.errors:
        raise producer.errors[0]


def _lines(path: str) -> Iterator[str]:
    if path == "-":
        yield from sys.stdin
        return
    if not Path(path).is_file():
        raise OSError(f"no file {path}: check the path")
    with open(path, encoding="utf-8") as f:
        yield from f


def _send_file(args: argparse.Namespace, headers: dict[str, Any] | None) -> int:
    start = last = time.monotonic()
    count = 0
    with Producer(args.broker, request_timeout_s=5.0, delivery_timeout_s=30.0) as producer:
        for line in _lines(args.file):
            line = line.rstrip("\n")
            if not line:
                continue
            producer.send(args.topic, parse_value(line), key=args.key, headers=headers)
            count += 1
            if count % 1000 == 0 and time.monotonic() - last > PROGRESS_EVERY_S:
                last = time.monotonic()
                _progress(count, last - start, end="\r")
        producer.flush(30.0)
        _raise_first(producer)
    _progress(count, time.monotonic() - start, end="\n", topic=args.topic)
    return 0


def _progress(count: int, elapsed: float, end: str, topic: str = "") -> None:
    rate = count / elapsed if elapsed > 0 else 0.0
    to = f" to {topic}" if topic else ""
    print(f"sent {count} events{to} in {elapsed:.1f} s ({rate:,.0f}/s)", end=end,
          file=sys.stderr, flush=True)


# -- tail -----------------------------------------------------------------------------
def _add_tail(sub: argparse._SubParsersAction) -> None:
    ap = with_broker(sub.add_parser("tail", help="print a topic's events",
                                     description="Print the last events of TOPIC (all of "
                                     "them with --from-beginning); --follow waits for more."))
    ap.add_argument("topic")
    ap.add_argument("--group", help="read as a member of this consumer group (and commit)")
    ap.add_argument("--from-beginning", action="store_true")
    ap.add_argument("--follow", "-f", action="store_true")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    set_handler(ap, guarded(cmd_tail))


def cmd_tail(args: argparse.Namespace) -> int:
    show: Callable[[Event], None] = ((lambda e: print(json.dumps(event_json(e)), flush=True))
                                     if args.json else (lambda e: print(event_line(e),
                                                                        flush=True)))
    if args.group:
        return _tail_group(args, show)
    conn = connect(args)
    try:
        meta = conn.call(p.Metadata(topics=[args.topic])).topics[0]
        positions = {i.partition: (i.start_offset if args.from_beginning
                                   else max(i.start_offset, i.end_offset - TAIL_LAST))
                     for i in meta.partitions}
        ends = {i.partition: i.end_offset for i in meta.partitions}
        while True:
            got = _fetch_round(conn, args.topic, positions, 500 if args.follow else 0)
            for event in got:
                if args.follow or event.offset < ends[event.partition]:
                    show(event)
            if not args.follow and all(positions[k] >= ends[k] for k in ends):
                return 0
    finally:
        conn.close()


def _fetch_round(conn: Connection, topic: str, positions: dict[int, int],
                 wait_ms: int) -> list[Event]:
    """One pipelined fetch per partition; advance ``positions``; events in partition order."""
    ids = {part: conn.send(p.Fetch(topic=topic, partition=part, offset=off, max_wait_ms=wait_ms))
           for part, off in positions.items()}
    events: list[Event] = []
    for part, rid in ids.items():
        reply = conn.wait(rid, timeout_s=wait_ms / 1000 + 5)
        got = dlq.events_of_fetch(reply)
        if got:
            positions[part] = got[-1].offset + 1
            events.extend(got)
    return events


def _tail_group(args: argparse.Namespace, show: Callable[[Event], None]) -> int:
    start = "earliest" if args.from_beginning else "latest"
    with Consumer(args.broker, group=args.group, topics=[args.topic], start=start,
                  client_id="rail-tail", timeout_s=5.0) as consumer:
        while True:
            events = consumer.poll(timeout_s=1.0)
            for event in events:
                show(event)
            consumer.commit()
            if not events and not args.follow:
                return 0


# -- topics ---------------------------------------------------------------------------
def _add_topics(sub: argparse._SubParsersAction) -> None:
    ap = with_broker(sub.add_parser("topics", help="list, create, delete, describe topics"))
    ap.add_argument("action", nargs="?", default="list",
                    choices=("list", "create", "delete", "describe"))
    ap.add_argument("name", nargs="?")
    ap.add_argument("--partitions", type=int, help="for create (default: the broker's)")
    ap.add_argument("--config", action="append", default=[], metavar="K=V",
                    help="for create: a topic setting, e.g. retention_ms=3600000")
    ap.add_argument("--json", action="store_true")
    set_handler(ap, guarded(cmd_topics))


def cmd_topics(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.name:
        print(f"rail topics {args.action}: name the topic: rail topics {args.action} NAME",
              file=sys.stderr)
        return 2
    conn = connect(args)
    try:
        if args.action == "create":
            config = {k: _config_value(v) for k, v in parse_pairs(args.config, "config").items()}
            reply = conn.call(p.CreateTopic(topic=args.name, partitions=args.partitions,
                                            config=config))
            print(f"created topic {reply.topic} with {reply.partitions} partitions")
        elif args.action == "delete":
            conn.call(p.DeleteTopic(topic=args.name))
            print(f"deleted topic {args.name}")
        else:
            names = [args.name] if args.action == "describe" else None
            _show_topics(conn.call(p.Metadata(topics=names)).topics, args)
        return 0
    finally:
        conn.close()


def _config_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def topic_json(info: p.TopicInfo) -> dict[str, Any]:
    parts = [{"partition": i.partition, "start_offset": i.start_offset,
              "end_offset": i.end_offset, "size_bytes": i.size_bytes} for i in info.partitions]
    return {"name": info.name, "partitions": parts, "config": info.config,
            "events": sum(i.end_offset - i.start_offset for i in info.partitions)}


def _show_topics(topics: list[p.TopicInfo], args: argparse.Namespace) -> None:
    data = [topic_json(t) for t in topics]
    if args.json:
        print_json(data if args.action == "list" else data[0])
        return
    if args.action == "list":
        print(f"{'TOPIC':30} {'PARTITIONS':>10} {'EVENTS':>12} {'BYTES':>14}")
        for t in data:
            size = sum(x["size_bytes"] for x in t["partitions"])
            print(f"{t['name']:30} {len(t['partitions']):>10} {t['events']:>12} {size:>14}")
        return
    t = data[0]
    print(f"topic {t['name']}: {len(t['partitions'])} partitions, {t['events']} events")
    for k, v in sorted(t["config"].items()):
        print(f"  {k} = {v}")
    print(f"{'PARTITION':>9} {'START':>12} {'END':>12} {'BYTES':>14}")
    for x in t["partitions"]:
        print(f"{x['partition']:>9} {x['start_offset']:>12} {x['end_offset']:>12} "
              f"{x['size_bytes']:>14}")


# -- groups ---------------------------------------------------------------------------
def _add_groups(sub: argparse._SubParsersAction) -> None:
    ap = with_broker(sub.add_parser("groups", help="list groups, describe one with its lag"))
    ap.add_argument("action", nargs="?", default="list", choices=("list", "describe"))
    ap.add_argument("name", nargs="?")
    ap.add_argument("--json", action="store_true")
    set_handler(ap, guarded(cmd_groups))


def group_json(reply: p.DescribeGroupReply) -> dict[str, Any]:
    return {"group": reply.group, "state": reply.state, "generation": reply.generation,
            "members": [{"member_id": m.member_id, "client_id": m.client_id,
                         "topics": m.topics, "assignment": [list(a) for a in m.assignment],
                         "last_seen_ms_ago": m.last_seen_ms_ago} for m in reply.members],
            "partitions": [{"topic": gp.topic, "partition": gp.partition,
                            "committed": gp.committed, "end_offset": gp.end_offset,
                            "lag": gp.lag, "owner": gp.owner} for gp in reply.partitions],
            "lag": sum(gp.lag for gp in reply.partitions)}


def cmd_groups(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        if args.action == "list":
            names = conn.call(p.ListGroups()).groups
            described = [group_json(conn.call(p.DescribeGroup(group=g))) for g in names]
            if args.json:
                print_json(described)
            else:
                print(f"{'GROUP':30} {'STATE':12} {'MEMBERS':>7} {'LAG':>10}")
                for g in described:
                    print(f"{g['group']:30} {g['state']:12} {len(g['members']):>7} "
                          f"{g['lag']:>10}")
            return 0
        if not args.name:
            print("rail groups describe: name the group: rail groups describe GROUP",
                  file=sys.stderr)
            return 2
        _show_group(group_json(conn.call(p.DescribeGroup(group=args.name))), args.json)
        return 0
    finally:
        conn.close()


def _show_group(g: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(g)
        return
    print(f"group {g['group']}: {g['state']}, generation {g['generation']}, "
          f"{len(g['members'])} members, lag {g['lag']}")
    for m in g["members"]:
        parts = ",".join(f"{t}[{n}]" for t, n in m["assignment"]) or "-"
        print(f"  member {m['member_id']} ({m['client_id'] or '-'}): {parts}")
    print(f"{'TOPIC':24} {'PARTITION':>9} {'COMMITTED':>10} {'END':>10} {'LAG':>8}  OWNER")
    for x in g["partitions"]:
        committed = "-" if x["committed"] is None else x["committed"]
        print(f"{x['topic']:24} {x['partition']:>9} {committed:>10} {x['end_offset']:>10} "
              f"{x['lag']:>8}  {x['owner'] or '-'}")


# -- run ------------------------------------------------------------------------------
def _add_run(sub: argparse._SubParsersAction) -> None:
    ap = with_broker(sub.add_parser("run", help="run a worker script in the foreground"))
    ap.add_argument("script")
    ap.add_argument("--topics", required=True, help="comma-separated topics")
    ap.add_argument("--group", help="consumer group (default: the script's name)")
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--start", choices=("earliest", "latest"), default="earliest")
    set_handler(ap, cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from runtime.worker import main as worker_main
    group = args.group or Path(args.script).stem
    return worker_main([args.script, "--broker", args.broker, "--group", group,
                        "--topics", args.topics, "--name", group,
                        "--retries", str(args.retries), "--start", args.start])
