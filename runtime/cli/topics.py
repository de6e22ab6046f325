"""``rail topics``: list, create, describe, alter (grow) and delete topics."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from brokerd import protocol as p
from runtime.cli.common import (
    CommandError, connect, guarded, leaf, parse_pairs, plural, print_json, set_handler, with_broker,
    with_json,
)


def add_topics(sub: argparse._SubParsersAction) -> None:
    ap = with_json(with_broker(sub.add_parser(
        "topics", help="list, create, describe, alter, delete topics",
        description="Without an action: list the topics.")), "the topics")
    set_handler(ap, guarded(cmd_topics_list, "topics"))
    inner = ap.add_subparsers(dest="topics_action", metavar="ACTION")

    listing = leaf(inner, "list", "list the topics with their partitions, events and bytes")
    with_json(listing, "the topics", inherited=True)
    set_handler(listing, guarded(cmd_topics_list, "topics list"))

    create = leaf(inner, "create", "create a topic")
    create.add_argument("name", help="the topic: [A-Za-z0-9._-], 1 to 249 characters")
    create.add_argument("--partitions", type=int, metavar="N",
                        help="how many partitions (default: the broker's)")
    create.add_argument("--config", action="append", default=[], metavar="K=V",
                        help="a topic setting, repeatable, e.g. retention_ms=3600000 "
                        "(see docs/protocol.md, topic configuration)")
    set_handler(create, guarded(cmd_topics_create, "topics create"))

    describe = leaf(inner, "describe", "show a topic's settings and partitions")
    describe.add_argument("name", help="the topic")
    with_json(describe, "the topic", inherited=True)
    set_handler(describe, guarded(cmd_topics_describe, "topics describe"))

    alter = leaf(inner, "alter", "grow a topic to more partitions (keys move: see docs/cli.md)")
    alter.add_argument("name", help="the topic")
    alter.add_argument("--partitions", type=int, required=True, metavar="N",
                       help="the new number of partitions in all, more than today's")
    set_handler(alter, guarded(cmd_topics_alter, "topics alter"))

    delete = leaf(inner, "delete", "delete a topic and all its events")
    delete.add_argument("name", help="the topic")
    set_handler(delete, guarded(cmd_topics_delete, "topics delete"))


def cmd_topics_list(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        data = [topic_json(t) for t in conn.call(p.Metadata()).topics]
    finally:
        conn.close()
    if args.json:
        print_json(data)
        return 0
    print(f"{'TOPIC':30} {'PARTITIONS':>10} {'EVENTS':>12} {'BYTES':>14}")
    for t in data:
        size = sum(x["size_bytes"] for x in t["partitions"])
        print(f"{t['name']:30} {len(t['partitions']):>10} {t['events']:>12} {size:>14}")
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    config = {k: _config_value(v) for k, v in parse_pairs(args.config, "config").items()}
    conn = connect(args)
    try:
        reply = conn.call(p.CreateTopic(topic=args.name, partitions=args.partitions,
                                        config=config))
    finally:
        conn.close()
    print(f"created topic {reply.topic} with {plural(reply.partitions, 'partition')}")
    return 0


def cmd_topics_describe(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        t = topic_json(conn.call(p.Metadata(topics=[args.name])).topics[0])
    finally:
        conn.close()
    if args.json:
        print_json(t)
        return 0
    print(f"topic {t['name']}: {plural(len(t['partitions']), 'partition')}, "
          f"{plural(t['events'], 'event')}")
    for k, v in sorted(t["config"].items()):
        print(f"  {k} = {v}")
    print(f"{'PARTITION':>9} {'START':>12} {'END':>12} {'BYTES':>14}")
    for x in t["partitions"]:
        print(f"{x['partition']:>9} {x['start_offset']:>12} {x['end_offset']:>12} "
              f"{x['size_bytes']:>14}")
    return 0


def cmd_topics_alter(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        before = len(conn.call(p.Metadata(topics=[args.name])).topics[0].partitions)
        if args.partitions <= before:
            raise CommandError(f"topic {args.name} has {plural(before, 'partition')}; "
                               f"partitions can only grow: give --partitions above {before}")
        reply = conn.call(p.CreatePartitions(topic=args.name, partitions=args.partitions))
    finally:
        conn.close()
    print(f"topic {reply.topic} now has {plural(reply.partitions, 'partition')} "
          f"(was {before})")
    print(f"note: new events of a key may go to another partition than its earlier ones "
          f"(hash % {reply.partitions}, not % {before})", file=sys.stderr)
    return 0


def cmd_topics_delete(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        conn.call(p.DeleteTopic(topic=args.name))
    finally:
        conn.close()
    print(f"deleted topic {args.name}")
    return 0


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
