"""``rail connect``: list, inspect, pause, resume and restart the connectors of a running
supervisor (rail.toml's ``[[connectors]]``), through its control socket.

A connector runs as a worker of the same name: pause scales it to 0 tasks (the entry stays,
its offsets stay), resume scales it back to its ``tasks`` in rail.toml (or ``--tasks``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runtime import control


def add_commands(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser("connect", help="list, pause, resume and restart connectors",
                         description="Drive the connectors (rail.toml's [[connectors]]) of a "
                         "running supervisor.")
    inner = top.add_subparsers(dest="connect_command", metavar="ACTION", required=True)
    listing = action(inner, "list", "every connector: kind, class, topics, tasks, state")
    listing.add_argument("--json", action="store_true", help="print the rows as JSON")
    listing.set_defaults(run=cmd_list)
    status = action(inner, "status", "one connector: its tasks, their pids and counts, and "
                    "a source's stored offsets")
    status.add_argument("name", help="the connector")
    status.set_defaults(run=cmd_status)
    pause = action(inner, "pause", "stop a connector's tasks, keeping its entry and offsets")
    pause.add_argument("name", help="the connector")
    pause.set_defaults(run=cmd_pause)
    resume = action(inner, "resume", "start a paused connector's tasks again")
    resume.add_argument("name", help="the connector")
    resume.add_argument("--tasks", type=int, help="how many (default: its tasks in "
                        "rail.toml, else 1)")
    resume.set_defaults(run=cmd_resume)
    restart = action(inner, "restart", "restart a connector's tasks (also a failed one)")
    restart.add_argument("name", help="the connector")
    restart.set_defaults(run=cmd_restart)


def action(inner: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = inner.add_parser(name, help=help, description=help)
    parser.add_argument("--control", default=control.default_endpoint(),
                        help="the supervisor's control socket (default %(default)s; "
                        "$RAIL_CONTROL sets it)")
    parser.add_argument("-c", "--config", help="the rail.toml the connectors come from "
                        "(default ./rail.toml): for their kind, class and tasks")
    return parser


def entries(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The ``[[connectors]]`` of rail.toml by name ({} without one)."""
    from runtime.config import load_config

    config, _ = load_config(args.config)
    args.broker = config.broker.endpoint or config.broker.bind
    return {str(e.get("name")): e for e in config.connectors}


def connectors(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The supervisor's workers that run the connect task script."""
    from runtime.connect.settings import TASK_SCRIPT

    status = control.call(args.control, control.Status())
    return [w for w in status["workers"] if w["script"] == TASK_SCRIPT]


def find(args: argparse.Namespace) -> dict[str, Any]:
    found = {w["name"]: w for w in connectors(args)}
    if args.name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise control.ControlError(f"no connector named {args.name!r} (connectors: {known}): "
                                   "see rail connect list")
    return found[args.name]


def cmd_list(args: argparse.Namespace) -> int:
    declared = entries(args)
    rows = []
    for w in connectors(args):
        entry = declared.get(w["name"], {})
        rows.append({"name": w["name"], "kind": entry.get("kind", "?"),
                     "class": entry.get("class", "?"), "topics": w["topics"],
                     "tasks": w["replicas"], "state": "paused" if w["replicas"] == 0
                     else w["state"], "processed": processed(w, entry),
                     "failed": w["failed"], "lag": w["lag"]})
    if args.json:
        import msgspec

        print(msgspec.json.encode(rows).decode())
        return 0
    name_w = max([4, *(len(r["name"]) for r in rows)])
    class_w = max([5, *(len(r["class"]) for r in rows)])
    print(f"{'NAME':<{name_w}}  {'KIND':<6} {'CLASS':<{class_w}} {'TASKS':>5} {'STATE':<10} "
          f"{'PROCESSED':>10} {'FAILED':>7}  TOPICS")
    for r in rows:
        print(f"{r['name']:<{name_w}}  {r['kind']:<6} {r['class']:<{class_w}} {r['tasks']:>5} "
              f"{r['state']:<10} {r['processed'] or 0:>10} {r['failed']:>7}  "
              f"{','.join(r['topics'])}")
    return 0


def processed(worker: dict[str, Any], entry: dict[str, Any]) -> int | None:
    """A sink's count is the supervisor's (from its group's offsets); a source has no
    group offsets, so its count is what its running tasks report."""
    if entry.get("kind") != "source":
        return worker["processed"]
    return sum(p["processed"] or 0 for p in worker["processes"])


def cmd_status(args: argparse.Namespace) -> int:
    w = find(args)
    entry = entries(args).get(args.name, {})
    state = "paused" if w["replicas"] == 0 else w["state"]
    print(f"{w['name']}: {state}, {control.counted(w['replicas'], 'task')}, processed "
          f"{processed(w, entry) or 0}, failed {w['failed']}, restarts {w['restarts']}"
          + (f", error: {w['error']}" if w["error"] else ""))
    for proc in w["processes"]:
        print(f"  task {proc['replica']}: pid {proc['pid']} {proc['state']} processed "
              f"{proc['processed']}")
    if entry.get("kind") == "source":
        show_source_offsets(args.broker, args.name, entry)
    return 0


def show_source_offsets(broker: str, name: str, entry: dict[str, Any]) -> None:
    """A source's checkpoints in ``_connect-offsets`` (what a restart resumes from, before
    the tail scan)."""
    from runtime.connect.offsets import load_checkpoint
    from runtime.connection import BrokerError
    from runtime.routing import connect

    conn = connect(broker, timeout_s=5)
    try:
        for task in range(max(1, int(entry.get("tasks", 1)))):
            point = load_checkpoint(conn, f"{name}/{task}")
            for partition, offset in sorted(point.offsets.items()):
                print(f"  task {task} offset {partition}: {offset}")
    except BrokerError as exc:
        print(f"rail: cannot read the stored offsets: {exc}", file=sys.stderr)
    finally:
        conn.close()


def cmd_pause(args: argparse.Namespace) -> int:
    find(args)
    control.call(args.control, control.Scale(name=args.name, replicas=0))
    print(f"{args.name} paused (rail connect resume {args.name} starts it again)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    find(args)
    tasks = args.tasks if args.tasks is not None else int(
        entries(args).get(args.name, {}).get("tasks", 1))
    control.call(args.control, control.Scale(name=args.name, replicas=tasks))
    print(f"{args.name} resumed with {control.counted(tasks, 'task')}")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    find(args)
    control.call(args.control, control.Restart(name=args.name))
    print(f"restarting {args.name}")
    return 0
