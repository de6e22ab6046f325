"""The worker script of bench/runtime_bench.py: a trivial handler, or one that stamps events.

Run by ``python -m runtime.worker`` or ``rail up`` like any worker script.  Times are
``time.monotonic()``, which on Linux is one clock for every process, so the bench can
compare them with its own.

    RAIL_BENCH_FIRST=DIR    handle() does nothing, except that the first call writes the
                            time to DIR/<pid>.first (one file per process; no per-event work
                            besides one flag test).
    RAIL_BENCH_STAMPS=DIR   each handle() appends "<time> <partition> <offset>" to
                            DIR/<pid>.stamps: for a slow stream (restart latency), not a fast one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

FIRST_DIR = os.environ.get("RAIL_BENCH_FIRST", "")
STAMPS_DIR = os.environ.get("RAIL_BENCH_STAMPS", "")
_seen_one = False


def setup(ctx: Any) -> None:
    if STAMPS_DIR:
        ctx.state["stamps"] = open(Path(STAMPS_DIR, f"{os.getpid()}.stamps"), "a", buffering=1)


if STAMPS_DIR:
    def handle(event: Any, ctx: Any) -> None:
        ctx.state["stamps"].write(f"{time.monotonic():.6f} {event.partition} {event.offset}\n")
else:
    def handle(event: Any, ctx: Any) -> None:
        global _seen_one
        if not _seen_one:
            _seen_one = True
            if FIRST_DIR:
                Path(FIRST_DIR, f"{os.getpid()}.first").write_text(f"{time.monotonic():.6f}")
