"""``rail cluster status``: the brokers of a cluster, its controller, and every partition's
leader and in-sync replicas, with what needs attention (kafka-topics --describe
--under-replicated-partitions, in one look); ``rail cluster reassign`` moves partitions'
replicas (kafka-reassign-partitions.sh) and ``rail cluster elect-leaders`` gives partitions
back to their preferred leaders (kafka-leader-election.sh)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from brokerd import protocol as p
from runtime.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    CommandError,
    UsageError,
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

    reassign = with_json(with_broker(inner.add_parser(
        "reassign", help="move partitions' replicas to other brokers; --verify: are they "
        "there yet; --list: the reassignments in progress; --cancel: put them back",
        description="Asks the cluster to move a partition's replicas (TOPIC PARTITION "
        "--replicas 2,3) or every partition of a plan file (--plan FILE: {\"partitions\": "
        "[{\"topic\", \"partition\", \"replicas\"}]}). The controller adds the new "
        "replicas, waits until they are in sync, moves leadership if the leader leaves, "
        "then drops the old replicas (docs/cluster.md). The first replica is the "
        "preferred leader.")), "the result")
    reassign.add_argument("topic", nargs="?", help="the topic of the partition to move "
                          "(not with --plan)")
    reassign.add_argument("partition", nargs="?", type=int, help="the partition to move")
    reassign.add_argument("--replicas", help="the new replica list: broker ids, comma-separated")
    reassign.add_argument("--plan", metavar="FILE", help="a JSON plan of many partitions")
    reassign.add_argument("--verify", action="store_true",
                          help="do not move anything: say which partitions of the plan are "
                          "done (exit 0 when all are, else 1)")
    reassign.add_argument("--list", action="store_true",
                          help="list the reassignments in progress")
    reassign.add_argument("--throttle", type=int, default=0, metavar="BYTES",
                          help="bytes a second each partition's leader sends each new "
                          "replica while it catches up (default: no limit); the same move "
                          "asked again while it runs takes the new throttle (0 lifts it)")
    reassign.add_argument("--cancel", action="store_true",
                          help="cancel the reassignment of TOPIC PARTITION, of each partition "
                          "of --plan, or with neither every one in progress: each goes back "
                          "to the replicas it had (exit 1 when one named was not in progress)")
    set_handler(reassign, guarded(cmd_cluster_reassign, "cluster reassign"))

    elect = with_json(with_broker(inner.add_parser(
        "elect-leaders", help="move leadership back to each partition's preferred replica "
        "(the first of its replicas) where it is in sync",
        description="Sent to the controller. Exit 1 when a partition asked for could not "
        "get its preferred leader (not live, not in sync, being reassigned).")), "the result")
    elect.add_argument("topic", nargs="?", help="only this topic (default: every partition)")
    elect.add_argument("partition", nargs="?", type=int, help="only this partition")
    set_handler(elect, guarded(cmd_cluster_elect_leaders, "cluster elect-leaders"))


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
    status["reassignments"] = _moving(args)
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
    moving = status["reassignments"]
    if moving:
        print(f"{plural(len(moving), 'reassignment')} in progress (their partitions count "
              "as under-replicated until the new replicas are in sync):")
    for r in moving:
        print(f"  {_moving_line(r)}")
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


# -- reassign -----------------------------------------------------------------------------
def _plan(args: argparse.Namespace) -> list[p.Reassignment]:
    if args.plan:
        if args.topic is not None or args.replicas:
            raise UsageError("give either --plan FILE or TOPIC PARTITION --replicas, not both")
        try:
            plan = json.loads(Path(args.plan).read_text())
            return [p.Reassignment(topic=str(x["topic"]), partition=int(x["partition"]),
                                   replicas=[int(b) for b in x["replicas"]])
                    for x in plan["partitions"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CommandError(f"cannot read the plan {args.plan}: {exc!r} (want "
                               '{"partitions": [{"topic", "partition", "replicas"}]})') from exc
    if args.topic is None or args.partition is None or args.replicas is None:
        raise UsageError("give TOPIC PARTITION --replicas 1,2,3, or --plan FILE, or --list")
    try:
        replicas = [int(b) for b in args.replicas.split(",") if b.strip()]
    except ValueError as exc:
        raise UsageError(f"--replicas takes broker ids, comma-separated, not "
                         f"{args.replicas!r}") from exc
    return [p.Reassignment(topic=args.topic, partition=args.partition, replicas=replicas)]


def _any(args: argparse.Namespace, request: Any) -> Any:
    """``request``'s reply from the first broker of ``--broker`` that answers it."""
    import zmq

    from runtime.routing import bootstrap_list, call_any
    return call_any(bootstrap_list(args.broker, args.broker), zmq.Context.instance(),
                    request, 10.0, retriable=frozenset({"UNAVAILABLE", "NOT_CONTROLLER"}))


def cmd_cluster_reassign(args: argparse.Namespace) -> int:
    if args.list:
        rows = _moving(args)
        if args.json:
            print(json.dumps(rows, indent=1))
        for r in [] if args.json else rows:
            print(_moving_line(r))
        if not rows and not args.json:
            print("no reassignment in progress")
        return EXIT_OK
    if args.cancel:
        return _cancel(args)
    plan = _plan(args)
    if args.throttle < 0:
        raise UsageError(f"--throttle takes bytes a second (0: no limit), not {args.throttle}")
    for x in plan:
        x.throttle = args.throttle
    if not args.verify:
        _any(args, p.ReassignPartitions(partitions=plan))
        if args.json:
            print(json.dumps([_item(x) for x in plan], indent=1))
        for x in [] if args.json else plan:
            rate = f", at most {x.throttle:,} B/s to each new replica" if x.throttle else ""
            print(f"{x.topic}[{x.partition}]: moving to {_ids(x.replicas)}{rate} "
                  "(rail cluster reassign --verify ... says when it is done)")
        return EXIT_OK
    moving = {(r.topic, r.partition) for r in _any(args, p.ListReassignments()).reassignments}
    meta = _any(args, p.Metadata(topics=sorted({x.topic for x in plan})))
    now = {(t.name, part.partition): part.replicas for t in meta.topics
           for part in t.partitions}
    rows = []
    for x in plan:
        key = (x.topic, x.partition)
        state = ("in progress" if key in moving else "complete" if now.get(key) == x.replicas
                 else "not as planned")
        rows.append({"topic": x.topic, "partition": x.partition, "replicas": now.get(key),
                     "planned": x.replicas, "state": state})
    if args.json:
        print(json.dumps(rows, indent=1))
    for r in [] if args.json else rows:
        print(f"{r['topic']}[{r['partition']}]: {r['state']} (replicas "
              f"{_ids(r['replicas'] or [])}, planned {_ids(r['planned'])})")
    return EXIT_OK if all(r["state"] == "complete" for r in rows) else EXIT_ERROR


def _cancel(args: argparse.Namespace) -> int:
    if args.verify or args.list or args.replicas:
        raise UsageError("--cancel takes TOPIC PARTITION, --plan FILE, or nothing (every "
                         "reassignment in progress); not --verify, --list or --replicas")
    if args.plan:
        named = [p.PartitionRef(topic=x.topic, partition=x.partition)
                 for x in _plan(args)]
    elif args.topic is not None:
        if args.partition is None:
            raise UsageError("--cancel TOPIC needs its PARTITION too")
        named = [p.PartitionRef(topic=args.topic, partition=args.partition)]
    else:
        named = []
    reply = _any(args, p.CancelReassignments(partitions=named))
    rows = [{"topic": x.topic, "partition": x.partition, "code": x.code, "message": x.message}
            for x in reply.partitions]
    if args.json:
        print(json.dumps(rows, indent=1))
    for r in [] if args.json else rows:
        print(f"{r['topic']}[{r['partition']}]: " + (
            "cancelled, going back to its replicas before (rail cluster reassign --list)"
            if not r["code"] else f"{r['code']}: {r['message']}"))
    if not rows and not args.json:
        print("no reassignment in progress")
    return EXIT_ERROR if any(r["code"] for r in rows) else EXIT_OK


def _moving(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The reassignments in progress."""
    return [_item(r) | {"adding": r.adding, "removing": r.removing, "cancelled": r.cancelled,
                        "throttle": r.throttle}
            for r in _any(args, p.ListReassignments()).reassignments]


def _moving_line(r: dict[str, Any]) -> str:
    if r.get("cancelled"):
        return (f"{r['topic']}[{r['partition']}] -> {_ids(r['replicas'])} cancelled: going "
                f"back (dropping {_ids(r['adding']) or '-'})")
    throttle = f", throttled to {r['throttle']:,} B/s" if r.get("throttle") else ""
    return (f"{r['topic']}[{r['partition']}] -> {_ids(r['replicas'])} (adding "
            f"{_ids(r['adding']) or '-'}, removing {_ids(r['removing']) or '-'}{throttle})")


def _ids(ids: list[int]) -> str:
    return ",".join(map(str, ids))


def _item(item: p.Reassignment) -> dict[str, Any]:
    return {"topic": item.topic, "partition": item.partition, "replicas": item.replicas}


# -- elect-leaders --------------------------------------------------------------------------
def cmd_cluster_elect_leaders(args: argparse.Namespace) -> int:
    from runtime.connection import Connection

    meta = _any(args, p.Metadata(topics=None))
    if not meta.brokers:
        raise CommandError(f"{args.broker} is a single broker, not a member of a cluster")
    api = {b.id: b.api for b in meta.brokers}.get(meta.controller)
    if api is None:
        raise CommandError("the cluster has no controller now: retry")
    conn = Connection(api, timeout_s=10.0)
    try:
        reply = conn.call(p.ElectLeaders(topic=args.topic, partition=args.partition))
    finally:
        conn.close()
    rows = [{"topic": e.topic, "partition": e.partition, "leader": e.leader,
             "code": e.code, "message": e.message} for e in reply.partitions]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        failed = [r for r in rows if r["code"]]
        print(f"{plural(len(rows) - len(failed), 'partition')} led by the preferred "
              f"replica, {len(failed)} not")
        for r in failed:
            print(f"  {r['topic']}[{r['partition']}]: {r['code']}: {r['message']} (leader "
                  f"{r['leader']})")
    return EXIT_ERROR if any(r["code"] for r in rows) else EXIT_OK
