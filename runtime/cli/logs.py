"""``rail logs NAME [-f] [--replica N] [-n LINES]``: the tail of a worker's (or brokerd's) log
under ``rail up``, like ``tail -n``/``tail -F`` but aware of the supervisor's copy-truncate
rotation and of the ``name.N | `` prefix each replica's lines carry."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from runtime import control
from runtime.cli.common import guarded

FOLLOW_EVERY_S = 0.2  # how often -f looks for new lines
TAIL_READ_BYTES = 16 * 2**20  # the most of one file read to find the last lines


def add_logs_command(sub: argparse._SubParsersAction,
                     control_parser: Callable[..., argparse.ArgumentParser]) -> None:
    logs = control_parser(sub, "logs", "show the end of a worker's log (or brokerd's), and "
                          "follow it with -f")
    logs.add_argument("name", help="a worker's name, or brokerd")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing new lines (across log rotation) until Ctrl-C")
    logs.add_argument("--replica", type=int, metavar="N",
                      help="only the lines of replica N (as in rail status NAME)")
    logs.add_argument("-n", "--lines", type=int, default=20, metavar="LINES",
                      help="how many lines to show first (default 20; 0: none)")
    logs.add_argument("--data-dir", help="read the logs of this data dir without asking the "
                      "supervisor (when rail up is not running)")
    # a closed pipe (rail logs x | head) or Ctrl-C ends it quietly, as for tail
    logs.set_defaults(run=guarded(cmd_logs, "logs"))


def cmd_logs(args: argparse.Namespace) -> int:
    folder = Path(args.data_dir) / "logs" if args.data_dir else \
        Path(control.call(args.control, control.Status())["logs"])
    path = folder / f"{args.name}.log"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.log"))
        raise control.ControlError(f"no log {path}: logs there: {', '.join(known) or 'none'}")
    prefix = f"{args.name}.{args.replica} | " if args.replica is not None else ""
    lines, end = tail(path, max(0, args.lines), prefix)
    for line in lines:
        sys.stdout.write(line)
    sys.stdout.flush()
    if args.follow:
        for line in follow(path, prefix, end):
            sys.stdout.write(line)
            sys.stdout.flush()
    return 0


def lines_of(path: Path, prefix: str) -> tuple[list[str], int]:
    """The complete lines starting with ``prefix`` near the end of ``path``, and the
    offset just past the last complete line."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = f.seek(max(0, size - TAIL_READ_BYTES))
            data = f.read()
    except FileNotFoundError:
        return [], 0
    data = data[:data.rfind(b"\n") + 1]
    text = data.decode(errors="replace")
    lines = [line for line in text.splitlines(keepends=True) if line.startswith(prefix)]
    return lines, start + len(data)


def tail(path: Path, count: int, prefix: str) -> tuple[list[str], int]:
    """The last ``count`` lines starting with ``prefix``, from the log and, if it has too
    few, from its newest rotated copy; and where in the log they end."""
    lines, end = lines_of(path, prefix)
    if len(lines) < count:
        lines = lines_of(path.with_name(path.name + ".1"), prefix)[0] + lines
    return (lines[-count:] if count else []), end


def follow(path: Path, prefix: str, position: int) -> Iterator[str]:
    """New lines after ``position`` as they are written, until interrupted.  When the log is
    cut (rotation copied it to ``.1`` first), the end of the copy is read before the new
    start."""
    rotated = path.with_name(path.name + ".1")
    copy = signature(rotated)
    partial = b""
    while True:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        rest = b""
        # Rotated since the last look: the log was cut (it may have grown past where we were
        # again) after a new copy was made.
        if size < position or signature(rotated) != copy:
            copy = signature(rotated)
            rest = read_from(rotated, position)
            position = 0
        new = read_from(path, position)
        position += len(new)
        chunk = rest + new
        if chunk:
            *done, partial = (partial + chunk).split(b"\n")
            for raw in done:
                line = raw.decode(errors="replace") + "\n"
                if line.startswith(prefix):
                    yield line
        else:
            time.sleep(FOLLOW_EVERY_S)


def signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read_from(path: Path, position: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(position)
            return f.read(TAIL_READ_BYTES)
    except FileNotFoundError:
        return b""
