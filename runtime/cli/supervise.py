"""``rail up`` and the commands that drive a running supervisor (status, register, scale, ...)."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import psutil

from runtime import control
from runtime.cli.common import guarded
from runtime.cli.logs import add_logs_command
from runtime.config import NODE_PATTERN, ConfigError, check_broker, load_config
from runtime.policy import POLICIES

DOWN_WAIT_S = 120.0


def add_supervisor_commands(sub: argparse._SubParsersAction) -> None:
    """Add up, down, status, register, unregister, scale and restart."""
    up = sub.add_parser("up", help="run the broker and every worker in the foreground",
                        description="Start brokerd (unless --broker) and every worker of "
                        "rail.toml and of the run-time registrations; Ctrl-C stops them all.")
    up.add_argument("-c", "--config", help="the rail.toml to use (default ./rail.toml)")
    up.add_argument("--broker", help="use the running broker at this endpoint instead of "
                    "starting one (a cluster's: tcp://a:7400,tcp://b:7400,...)")
    up.add_argument("--zookeeper", metavar="HOST:PORT[,...][/chroot]",
                    help="the broker rail up starts joins the cluster coordinated by this "
                    "ZooKeeper (default [broker].zookeeper); needs --broker-id")
    up.add_argument("--broker-id", type=int, metavar="N", help="that broker's id in the "
                    "cluster, its own N >= 0 (default [broker].broker_id)")
    up.add_argument("--advertise", metavar="ENDPOINT", help="the endpoint other brokers and "
                    "clients reach that broker at, when not its bind (default "
                    "[broker].advertise)")
    up.add_argument("--node", metavar="NAME", help="this supervisor's name in its workers' "
                    "member ids (cook-0.NAME; default [supervisor].node, else b<broker id> "
                    "in a cluster, the host name with --broker): unique per supervisor "
                    "sharing groups")
    up.add_argument("--data-dir", help="broker data, logs and registrations "
                    "(default [broker].data_dir)")
    up.add_argument("--control", help="control socket to bind (default [supervisor].control)")
    up.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics there "
                    "(default [supervisor].metrics; off when empty)")
    up.add_argument("--console", metavar="HOST:PORT", help="serve the web console there "
                    "(default [supervisor].console; off when empty; beyond loopback it needs "
                    "$RAIL_CONSOLE_TOKEN)")
    up.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default), WARNING")
    up.set_defaults(run=cmd_up)

    down = control_parser(sub, "down", "stop the supervisor gracefully and wait for it")
    down.set_defaults(run=cmd_down)
    status = control_parser(sub, "status", "show every worker: pids, state, CPU, RSS, lag; "
                            "with NAME, a row per replica and what each is handling now")
    status.add_argument("name", nargs="?", default="", help="one worker: a row per replica")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.set_defaults(run=guarded(cmd_status, "status"))  # rail status | head: quiet

    register = control_parser(sub, "register", "run a worker script (kept across rail up)")
    register.add_argument("name", help="the worker's name")
    register.add_argument("script", help="a .py file defining handle(event, ctx)")
    register.add_argument("--topics", required=True, help="comma-separated topics to read")
    register.add_argument("--group", default="", help="consumer group (default: the name)")
    register.add_argument("--replicas", type=int, default=1, help="processes (default 1)")
    register.add_argument("--policy", choices=POLICIES, default="permanent",
                          help="restart policy (default permanent)")
    register.set_defaults(run=cmd_register)

    unregister = control_parser(sub, "unregister", "stop a worker and forget it")
    unregister.add_argument("name", help="the worker to stop and forget")
    unregister.set_defaults(run=cmd_unregister)
    scale = control_parser(sub, "scale", "change a worker's number of replicas")
    scale.add_argument("name", help="the worker")
    scale.add_argument("replicas", type=int, help="how many processes it should run")
    scale.set_defaults(run=cmd_scale)
    add_logs_command(sub, control_parser)
    reload = control_parser(sub, "reload", "read rail.toml again: add, remove, rescale and "
                            "restart the workers whose entries changed; print what changed")
    reload.set_defaults(run=cmd_reload)
    restart = control_parser(sub, "restart", "restart a worker's replicas, or brokerd (also a "
                             "failed one)")
    restart.add_argument("name", help="a worker's name, or brokerd")
    restart.set_defaults(run=lambda a: show(control.call(a.control, control.Restart(
        name=a.name)), f"restarting {a.name}"))


def control_parser(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    parser.add_argument("--control", default=control.default_endpoint(),
                        help="the supervisor's control socket (default %(default)s; "
                        "env RAIL_CONTROL)")
    return parser


def cmd_up(args: argparse.Namespace) -> int:
    from runtime.supervisor import Supervisor, copy_config
    config, base = load_config(args.config)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s rail %(levelname)s %(message)s")
    toml = copy_config(config)  # as the file says, before the flags below
    if args.data_dir:
        config.broker.data_dir = str(Path(args.data_dir).resolve())
    if args.control:
        config.supervisor.control = args.control
    if args.node:
        if not re.match(NODE_PATTERN, args.node):
            raise ConfigError(f"--node {args.node!r}: letters, digits, '_', '.' and '-', "
                              "at most 63, starting with a letter or digit")
        config.supervisor.node = args.node
    if args.metrics:
        config.supervisor.metrics = args.metrics
    if args.console:
        config.supervisor.console = args.console
    apply_cluster_flags(args, config.broker)
    path = Path(args.config or "rail.toml").resolve()
    return Supervisor(config, base, broker_endpoint=args.broker or "", config_path=path,
                      toml=toml).run()


def apply_cluster_flags(args: argparse.Namespace, broker: Any) -> None:
    """--zookeeper, --broker-id, --advertise over rail.toml's [broker]; then the checks.
    ``--broker`` alone runs workers only: the file's keys for a broker to start do not
    apply then."""
    if args.broker and not (args.zookeeper or args.broker_id is not None or args.advertise):
        broker.zookeeper, broker.broker_id, broker.advertise = "", None, ""
    if args.zookeeper:
        broker.zookeeper = args.zookeeper
    if args.broker_id is not None:
        if args.broker_id < 0:
            raise ConfigError(f"--broker-id {args.broker_id}: an id is a number >= 0")
        broker.broker_id = args.broker_id
    if args.advertise:
        broker.advertise = args.advertise
    if args.broker:
        broker.endpoint = args.broker
    check_broker(broker)


def cmd_down(args: argparse.Namespace) -> int:
    pid = control.call(args.control, control.Down())["pid"]
    print(f"stopping the supervisor (pid {pid})")
    deadline = time.monotonic() + DOWN_WAIT_S
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.Error:
            break
        time.sleep(0.1)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    changes = control.call(args.control, control.Reload(), timeout_s=30.0)["changes"]
    for line in changes:
        print(line)
    if not changes:
        print("rail.toml unchanged: nothing to do")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    topics = [t for t in args.topics.split(",") if t]
    if not topics:
        raise control.ControlError("--topics is empty: give at least one topic, e.g. --topics orders")
    request = control.Register(name=args.name, script=str(Path(args.script).resolve()),
                               topics=topics, group=args.group, replicas=args.replicas,
                               policy=args.policy)
    result = control.call(args.control, request)
    print(f"registered {result['name']} ({control.counted(result['replicas'], 'replica')})")
    warn(result)
    return 0


def cmd_unregister(args: argparse.Namespace) -> int:
    result = control.call(args.control, control.Unregister(name=args.name))
    if result["from_rail_toml"]:
        print(f"stopped {args.name}; it is declared in rail.toml and comes back on the next "
              "rail up: remove it there to drop it for good")
    else:
        print(f"unregistered {args.name}")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    result = control.call(args.control, control.Scale(name=args.name, replicas=args.replicas))
    note = "" if result["persisted"] else " (until the next rail up: set replicas in rail.toml)"
    print(f"{args.name} scaled to {control.counted(args.replicas, 'replica')}{note}")
    warn(result)
    return 0


def warn(result: dict[str, Any]) -> None:
    """The supervisor's warnings about a request it carried out, one line each on stderr."""
    for line in result.get("warnings", []):
        print(f"rail: warning: {line}", file=sys.stderr)


def show(result: Any, line: str) -> int:
    print(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = control.call(args.control, control.Status(name=args.name))
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(status)).decode())
        return 0
    if args.name:
        print_replicas(status["workers"][0])
        return 0
    broker = status["broker"]
    print(f"supervisor pid {status['pid']} up {duration(status['uptime_s'])}; broker "
          f"{broker['endpoint']} {broker['state']}"
          + (f" pid {broker['pid']}" if broker["pid"] else "")
          + (f" restarts {broker['restarts']}" if broker["restarts"] else ""))
    rows = [("NAME", "REPLICAS", "PIDS", "STATE", "RESTARTS", "UPTIME", "CPU%", "RSS",
             "PROCESSED", "LAG")]
    for w in status["workers"]:
        rows.append((w["name"], f"{len(w['pids'])}/{w['replicas']}",
                     ",".join(map(str, w["pids"])) or "-", w["state"], str(w["restarts"]),
                     duration(w["uptime_s"]), "-" if w["cpu_percent"] is None
                     else f"{w['cpu_percent']:.1f}", size(w["rss"]), str(w["processed"]),
                     "-" if w["lag"] is None else str(w["lag"])))
    print_table(rows)
    if broker.get("error"):
        print(f"brokerd: {broker['error']}")
    for w in status["workers"]:
        if w["error"]:
            print(f"{w['name']}: {w['error']}")
    return 0


def print_replicas(w: dict[str, Any]) -> None:
    """``rail status NAME``: the worker's line, then a row per replica."""
    print(f"{w['name']}: {w['state']}, {control.counted(w['replicas'], 'replica')}, group "
          f"{w['group']}, topics {','.join(w['topics'])}, processed {w['processed']}, lag "
          f"{'-' if w['lag'] is None else w['lag']}; script {w['script']}")
    rows = [("REPLICA", "PID", "STATE", "UPTIME", "RESTARTS", "CPU%", "RSS", "HANDLING")]
    for r in w["processes"]:
        h = r["handling"]
        rows.append((str(r["replica"]), str(r["pid"] or "-"), r["state"], duration(r["uptime_s"]),
                     str(r["restarts"]),
                     "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.1f}",
                     size(r["rss"]), "-" if h is None else
                     f"{h['topic']}[{h['partition']}]@{h['offset']} for {h['for_s']:.1f}s"
                     + (f" (+{h['in_flight'] - 1} more)" if h.get("in_flight", 1) > 1 else "")))
    print_table(rows)
    if w["error"]:
        print(f"{w['name']}: {w['error']}")


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def size(rss: int | None) -> str:
    return "-" if rss is None else f"{rss / 2**20:.0f}M"

