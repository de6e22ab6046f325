"""``rail``: run the supervisor (``rail up``), drive it, and read and write the broker's data.

Each group of sub-commands lives in its own module and adds itself to the parser.  Errors are
one line naming the problem and the fix, with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys

from brokerd.protocol import EXIT_CONFIG
from runtime import control
from runtime.cli.data import add_data_commands, add_version_option
from runtime.cli.dlq import add_dlq_commands
from runtime.cli.supervise import add_supervisor_commands
from runtime.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rail", description="Rail: a durable event log and supervised workers.")
    add_version_option(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_supervisor_commands(sub)
    add_data_commands(sub)
    add_dlq_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except control.ControlError as exc:
        print(f"rail: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"rail: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


