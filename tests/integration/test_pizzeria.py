"""The README's first command: the whole pizzeria under ``rail up``, end to end."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, python_env


def test_the_pizzeria_makes_every_item_of_1000_orders_exactly_once() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pizzeria" / "demo.py"), "--orders", "1000"],
        env=python_env(), cwd=ROOT, text=True, capture_output=True, timeout=240)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "summary: 1000 orders" in out
    assert "every ordered item made exactly once: OK" in out
    assert "pizza lag 0, pasta lag 0, drinks lag 0, tally lag 0, dishes lag 0" in out
    # the streams step's windowed counts per station add up to what each station made
    assert "(Rail Streams), summed: " in out and ": equal to the tally" in out
    # both pizza replicas got a share of the orders' partitions
    pizza = next(line for line in out.splitlines() if line.strip().startswith("pizza "))
    assert "pizza-0" in pizza and "pizza-1" in pizza
