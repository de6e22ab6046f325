"""Crash-correlated poison quarantine under ``rail up``: an event that kills its worker's
process 3 times goes to the DLQ with the crash reasons, and the rest of its partition is
handled, instead of the worker crash-looping into ``failed``."""

from __future__ import annotations

import pytest

from runtime.connection import Connection
from runtime.dlq import header, read_all
from tests.helpers import wait_for
from tests.integration.test_supervisor import Rail, rail  # noqa: F401

POISON = """
import os
def handle(event, ctx):
    if event.value == 7:
        os._exit(1)
    with open({out!r}, "a") as f:
        f.write(f"{{event.value}}\\n")
"""


@pytest.mark.parametrize("concurrency", [1, 4])
def test_an_event_that_kills_the_worker_3_times_is_quarantined(rail: Rail,  # noqa: F811
                                                               concurrency: int) -> None:
    rail.script("poison.py", POISON.format(out=str(rail.out)))
    rail.write_toml('[workers.poison]\nscript = "poison.py"\ntopics = ["orders"]\n'
                    f"backoff_s = 0.05\nconcurrency = {concurrency}\n",
                    topics="[topics.orders]\npartitions = 1\n")
    rail.up()
    rail.send(range(20))
    # events before the poisonous one come again after each crash (not committed yet)
    wait_for(lambda: set(rail.seen()) == set(range(20)) - {7}, timeout=30,
             what="every event but the poisonous one handled")
    conn = Connection(rail.api)
    try:
        dead = wait_for(lambda: read_all(conn, "orders.dlq"), timeout=10, what="the DLQ event")
    finally:
        conn.close()
    assert [e.value for e in dead] == [7]
    assert header(dead[0], "rail.source.offset") == "7"
    assert header(dead[0], "rail.attempts") == "3"
    assert "died 3 times" in (header(dead[0], "rail.error") or "")
    assert "code 1" in (header(dead[0], "rail.error") or "")
    worker = rail.worker("poison")
    assert worker["state"] == "running" and worker["restarts"] == 3
    assert "quarantined to orders.dlq after 3 crashes" in rail.log()
