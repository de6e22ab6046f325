"""``rail console``: serve the web console for a broker (and a supervisor's tree)."""

from __future__ import annotations

import argparse
import os
import sys

from brokerd.protocol import EXIT_CONFIG
from runtime import control
from runtime.connection import DEFAULT_BROKER

DEFAULT_BIND = "127.0.0.1:7480"


def add_commands(sub: argparse._SubParsersAction) -> None:
    ap = sub.add_parser(
        "console", help="serve the web console (supervision tree, topics, messages, groups, "
        "dead letters)", description="Serve Rail's web console over HTTP. Bound beyond "
        "loopback it needs a token; --read-only refuses every change.")
    ap.add_argument("--broker", default=os.environ.get("RAIL_BROKER", DEFAULT_BROKER),
                    help=f"broker API endpoint (default: $RAIL_BROKER or {DEFAULT_BROKER})")
    ap.add_argument("--control", default=control.default_endpoint(),
                    help="the supervisor's control socket, for the tree (default "
                    "%(default)s; env RAIL_CONTROL; '' for none)")
    ap.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT",
                    help="where to serve (default %(default)s)")
    ap.add_argument("--read-only", action="store_true",
                    help="show everything, change nothing (no restart, scale, create, delete, "
                    "reset, replay or purge)")
    ap.add_argument("--token", default=os.environ.get("RAIL_CONSOLE_TOKEN", ""),
                    help="required from every client (open /?token=TOKEN once); needed when "
                    "--bind is beyond loopback (env RAIL_CONSOLE_TOKEN)")
    ap.add_argument("--every", type=float, default=1.0, metavar="SECONDS",
                    help="how often the console asks the supervisor for the tree (default "
                    "%(default)s); the broker for the overview and lag history every other "
                    "time")
    ap.add_argument("--history", default="", metavar="FILE",
                    help="keep the lag history in FILE, so a restarted console shows the last "
                    "hour (default: in memory only; rail up --console keeps one in its data "
                    "folder)")
    ap.set_defaults(run=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    from runtime.console import ConsoleConfigError, Settings, serve
    host, sep, port = args.bind.rpartition(":")
    if not sep or not port.isdigit():
        print(f"rail console: --bind {args.bind!r}: write it as HOST:PORT", file=sys.stderr)
        return 2
    if not 0.05 <= args.every <= 3600:
        print(f"rail console: --every {args.every:g}: give 0.05 to 3600 seconds",
              file=sys.stderr)
        return 2
    settings = Settings(broker=args.broker, control=args.control, host=host.strip("[]"),
                        port=int(port), read_only=args.read_only, token=args.token,
                        every_s=args.every, history=args.history)
    try:
        print(f"rail console: http://{args.bind}/ (broker {args.broker}"
              + (f", supervisor {args.control}" if args.control else "")
              + (", read-only" if args.read_only else "") + ")", file=sys.stderr, flush=True)
        serve(settings)
    except ConsoleConfigError as exc:
        print(f"rail console: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"rail console: cannot serve on {args.bind}: {exc}", file=sys.stderr)
        return 1
    return 0
