"""``rail cluster status``: the brokers of a cluster, its controller, and every partition's
leader and in-sync replicas, with what needs attention (kafka-topics --describe
--under-replicated-partitions, in one look)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from brokerd import protocol as p
from runtime.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    CommandError,
    connect,
    guarded,
    plural,
    set_handler,
    with_broker,
    with_json,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    ap = sub.add_parser("cluster", help="a cluster's brokers, controller and partitions",
                        description="Look at a ZooKeeper-coordinated cluster (docs/cluster.md).")
    inner = ap.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)
    status = with_json(with_broker(inner.add_parser(
        "status", help="brokers, controller, and each partition's leader and in-sync "
        "replicas; exit 1 when a partition is offline or under-replicated",
        description="Asks one broker (any) for the cluster's metadata.")), "the status")
    status.add_argument("--all", action="store_true",
                        help="list every partition, not only those that need attention")
    set_handler(status, guarded(cmd_cluster_status, "cluster status"))


def cmd_cluster_status(args: argparse.Namespace) -> int:
    conn = connect(args)
    try:
        meta = conn.call(p.Metadata(topics=None))
    finally:
        conn.close()
    if not meta.brokers:
        raise CommandError(f"{args.broker} is a single broker, not a member of a cluster "
                           "(start brokers with --broker-id and --zookeeper: docs/cluster.md)")
    status = summarize(meta)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        print_status(status, args.all)
    return EXIT_ERROR if status["offline"] or status["under_replicated"] else EXIT_OK


def summarize(meta: p.MetadataReply) -> dict[str, Any]:
    live = {b.id for b in meta.brokers}
    partitions = []
    for topic in sorted(meta.topics, key=lambda t: t.name):
        for part in topic.partitions:
            state = ("offline" if part.leader < 0 or part.leader not in live
                     else "under-replicated" if len(part.isr) < len(part.replicas)
                     else "ok")
            partitions.append({"topic": topic.name, "partition": part.partition,
                               "leader": part.leader, "leader_epoch": part.leader_epoch,
                               "replicas": part.replicas, "isr": part.isr, "state": state,
                               "end_offset": part.end_offset})
    return {
        "brokers": [{"id": b.id, "api": b.api, "ingest": b.ingest,
                     "controller": b.id == meta.controller} for b in meta.brokers],
        "controller": meta.controller,
        "partitions": partitions,
        "offline": sum(1 for x in partitions if x["state"] == "offline"),
        "under_replicated": sum(1 for x in partitions if x["state"] == "under-replicated"),
    }


def print_status(status: dict[str, Any], every: bool) -> None:
    print(f"{plural(len(status['brokers']), 'broker')}, controller "
          f"{status['controller'] if status['controller'] >= 0 else 'none'}")
    for b in status["brokers"]:
        print(f"  {b['id']:>4}  {b['api']}{'  (controller)' if b['controller'] else ''}")
    parts = status["partitions"]
    print(f"{plural(len(parts), 'partition')}: {status['offline']} offline, "
          f"{status['under_replicated']} under-replicated")
    shown = parts if every else [x for x in parts if x["state"] != "ok"]
    if not shown:
        return
    rows = [["TOPIC", "PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "STATE"]]
    rows += [[x["topic"], str(x["partition"]), str(x["leader"]), str(x["leader_epoch"]),
              ",".join(map(str, x["replicas"])), ",".join(map(str, x["isr"])), x["state"]]
             for x in shown]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
