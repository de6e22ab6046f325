"""``rail``: run the supervisor (``rail up``), drive it, and read and write the broker's data.

Each group of sub-commands lives in its own module and adds itself to the parser.  Errors are
one line naming the problem and the fix, with a non-zero exit code.

The layers (``rail keys``, ``rail connect``, ``rail streams``, ``rail console`` ...) are found,
not listed: every module of this package that defines ``add_commands(subparsers)`` adds its
own.  Such a module imports its heavy dependencies inside its commands, so that ``rail``
starts fast whichever command runs.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
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
    for module in _layer_modules():
        module.add_commands(sub)
    return parser


def _layer_modules() -> list:
    modules = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name.startswith("_"):  # __main__ runs rail itself when imported
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if callable(getattr(module, "add_commands", None)):
            modules.append(module)
    return modules


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


