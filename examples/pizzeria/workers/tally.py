"""The tally: counts the dishes on kitchen.done, once each, and keeps running totals.

Totals go to ``$RAIL_TALLY_PATH`` (default ``data/tally.json`` under the folder of rail.toml,
where ``rail up`` runs workers), rewritten atomically a few times a second.  Each dish id is
appended to ``<tally>.seen`` before its offset can be committed, so a restarted tally
reloads what it counted and a redelivered dish is recognised as a duplicate, not counted
again.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

WRITE_EVERY_S = 0.2


def tally_path() -> Path:
    return Path(os.environ.get("RAIL_TALLY_PATH") or "data/tally.json")


def setup(ctx):
    path = tally_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    seen_path = path.with_suffix(".seen")
    ctx.state.update(path=path, lock=threading.Lock(), dirty=True, stop=threading.Event(),
                     seen=set(), duplicates=0, by_kind={}, by_cook={}, orders=set())
    if seen_path.exists():
        for line in seen_path.read_text().splitlines():
            if line.endswith("}"):
                count(ctx.state, json.loads(line))
    ctx.state["seen_file"] = open(seen_path, "a", buffering=1)
    writer = threading.Thread(target=write_loop, args=(ctx.state,), daemon=True)
    writer.start()
    ctx.state["writer"] = writer


def count(state, dish) -> bool:
    """Count ``dish`` unless already counted; True when it was new."""
    dish_id = (dish["order_id"], dish["item"])
    if dish_id in state["seen"]:
        state["duplicates"] += 1
        return False
    state["seen"].add(dish_id)
    state["orders"].add(dish["order_id"])
    state["by_kind"][dish["kind"]] = state["by_kind"].get(dish["kind"], 0) + 1
    cooks = state["by_cook"].setdefault(dish["station"], {})
    cooks[dish["cook"]] = cooks.get(dish["cook"], 0) + 1
    return True


def handle(event, ctx):
    state = ctx.state
    with state["lock"]:
        if count(state, event.value):
            state["seen_file"].write(json.dumps(event.value) + "\n")
        state["dirty"] = True


def totals(state) -> dict:
    return {"dishes": len(state["seen"]), "orders": len(state["orders"]),
            "by_kind": dict(state["by_kind"]),
            "by_station": {s: dict(c) for s, c in state["by_cook"].items()},
            "duplicates": state["duplicates"]}


def write_totals(state) -> None:
    with state["lock"]:
        if not state["dirty"]:
            return
        data = totals(state)
        state["dirty"] = False
    path = state["path"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_loop(state) -> None:
    while not state["stop"].wait(WRITE_EVERY_S):
        write_totals(state)


def teardown(ctx):
    ctx.state["stop"].set()
    ctx.state["writer"].join(timeout=2)
    ctx.state["dirty"] = True
    write_totals(ctx.state)
    ctx.state["seen_file"].close()
    ctx.log.info("tally: %s", json.dumps(totals(ctx.state)))
