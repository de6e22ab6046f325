"""Append every event it reads to a JSON-lines file.

The file is ``$RAIL_SINK_PATH``, else ``./rail-sink-<worker name>.jsonl`` in the current
folder.  Each line is ``{"topic", "partition", "offset", "timestamp", "key", "value",
"headers"}`` (bytes as UTF-8 text, or ``{"base64": ...}``).  The file is flushed after
each event, so a committed offset never points past what is on disk (a crash may repeat
the last lines: delivery is at-least-once).

    RAIL_SINK_PATH=/tmp/orders.jsonl rail register sink workers/jsonl_sink.py --topics orders
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from runtime.client import Event
from runtime.cli.common import event_json
from runtime.worker import Context, run


def sink_path(ctx: Context) -> Path:
    return Path(os.environ.get("RAIL_SINK_PATH") or f"rail-sink-{ctx.name}.jsonl")


def setup(ctx: Context) -> None:
    path = sink_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    ctx.state["file"] = open(path, "a", encoding="utf-8", buffering=1)
    ctx.log.info("appending events to %s", path.resolve())


def handle(event: Event, ctx: Context) -> None:
    ctx.state["file"].write(json.dumps(event_json(event), ensure_ascii=False) + "\n")


def teardown(ctx: Context) -> None:
    ctx.state["file"].close()


if __name__ == "__main__":
    run(handle)
