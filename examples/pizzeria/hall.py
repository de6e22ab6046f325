"""The hall: takes N random orders and pins them on the ``orders`` rail.

    python examples/pizzeria/hall.py --orders 200 [--broker tcp://127.0.0.1:7400]

Each order is ``{"order_id", "table", "items": [{"kind": "pizza"|"pasta"|"drink",
"name"}, ...]}``, keyed by its order id.  The expected number of items of each kind is
written to ``--expected`` (default data/expected.json next to this file) so a check can
compare it with what the kitchen made.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout too

from runtime.client import DEFAULT_BROKER, Producer  # noqa: E402

MENU = {
    "pizza": ["margherita", "diavola", "quattro formaggi", "capricciosa", "marinara"],
    "pasta": ["carbonara", "amatriciana", "pesto", "cacio e pepe"],
    "drink": ["water", "lemonade", "chinotto", "espresso", "red wine"],
}


def random_order(rng: random.Random, order_id: str) -> dict:
    items = [{"kind": kind, "name": rng.choice(MENU[kind])}
             for kind in rng.choices(list(MENU), k=rng.randint(1, 5))]
    return {"order_id": order_id, "table": rng.randint(1, 20), "items": items}


def take_orders(broker: str, count: int, seed: int | None = None,
                acks: int | str | None = None) -> dict:
    """Send ``count`` orders; return the expected counts.  ``acks``: the producer's
    default, "all" on a cluster (whose leader may die: an order acknowledged by the leader
    alone could be lost) and 1 on a single broker."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    expected = {kind: 0 for kind in MENU}
    with Producer(broker, acks=acks) as producer:
        for n in range(1, count + 1):
            order = random_order(rng, f"{run}-{n:05d}")
            for item in order["items"]:
                expected[item["kind"]] += 1
            producer.send("orders", order, key=order["order_id"])
    return {"orders": count, "items": expected, "total": sum(expected.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default=os.environ.get("RAIL_BROKER", DEFAULT_BROKER))
    ap.add_argument("--orders", type=int, default=200)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--expected", default=str(Path(__file__).parent / "data" / "expected.json"))
    args = ap.parse_args()
    expected = take_orders(args.broker, args.orders, args.seed)
    path = Path(args.expected)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(expected, indent=2))
    items = ", ".join(f"{n} {kind}" for kind, n in expected["items"].items())
    print(f"hall: sent {args.orders} orders ({expected['total']} items: {items})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
