"""What every kitchen station does with an order: cook its own kind of item, report each dish.

A dish event on ``kitchen.done`` is keyed by the order id and names the order's item by its
index, so the tally can tell a redelivered dish (at-least-once) from a new one.
"""

from __future__ import annotations

from typing import Any

from runtime.client import Event
from runtime.worker import Context

DONE_TOPIC = "kitchen.done"


def cook(kind: str, event: Event, ctx: Context) -> None:
    order: dict[str, Any] = event.value
    for index, item in enumerate(order["items"]):
        if item["kind"] != kind:
            continue
        ctx.send(DONE_TOPIC, {"order_id": order["order_id"], "item": index, "kind": kind,
                              "name": item["name"], "table": order["table"],
                              "station": ctx.name, "cook": ctx.member_id},
                 key=order["order_id"])
        ctx.state["made"] = ctx.state.get("made", 0) + 1


def report(ctx: Context) -> None:
    ctx.log.info("%s made %d dishes", ctx.member_id, ctx.state.get("made", 0))
