"""Stuck work is visible: ``rail status NAME`` shows, per replica, the oldest event in its
handlers, its age and how many more run beside it; with ``handler_timeout_action =
"report"`` a handler past ``handler_timeout_s`` is logged, not killed."""

from __future__ import annotations

import re

from runtime.client import Producer
from tests.helpers import wait_for
from tests.integration.test_supervisor import Rail, rail  # noqa: F401

SLOW = """
import time
def handle(event, ctx):
    time.sleep(3)
"""


def test_status_shows_the_events_in_flight_and_a_slow_handler_is_reported(rail: Rail) -> None:  # noqa: F811
    rail.script("slow.py", SLOW)
    rail.write_toml('[workers.slow]\nscript = "slow.py"\ntopics = ["orders"]\nconcurrency = 2\n'
                    'handler_timeout_s = 1\nhandler_timeout_action = "report"\ndrain_timeout_s = 0\n',
                    topics="[topics.orders]\npartitions = 1\n")
    rail.up()
    with Producer(rail.api) as producer:
        producer.send("orders", 1, key="a")
        producer.send("orders", 2, key="b")
    pid = wait_for(lambda: rail.running("slow", 1), timeout=20, what="slow running")["pids"][0]

    def handling() -> str | None:
        out = rail.rail("status", "slow").stdout
        found = re.search(r"orders\[0\]@\d for (\d+\.\d)s \(\+1 more\)", out)
        return found.group(0) if found and float(found.group(1)) >= 1.5 else None

    wait_for(handling, timeout=10, what="rail status to show 2 events in flight for 1.5 s+")
    wait_for(lambda: "is taking long (handle() busy for" in rail.log(), timeout=10,
             what="the slow handler reported")
    assert rail.worker("slow")["pids"] == [pid]  # reported, not killed
