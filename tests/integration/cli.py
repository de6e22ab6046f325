"""Run ``python -m runtime.cli`` as a user does, against a test's broker."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from brokerd import protocol as p
from runtime.client import Event
from runtime.connection import Connection
from runtime.cli.tail import events_of_fetch
from tests.helpers import ROOT, BrokerProcess, python_env

RAIL = [sys.executable, "-m", "runtime.cli"]


def rail_env(broker: BrokerProcess) -> dict[str, str]:
    return {**python_env(), "RAIL_BROKER": broker.api}


def rail(broker: BrokerProcess, *args: str | bytes, input: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """``rail ARGS`` to its end; with ``check``, it must exit 0 without a traceback."""
    done = subprocess.run([*RAIL, *args], env=rail_env(broker), cwd=ROOT, text=True,
                          capture_output=True, input=input, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    if check:
        assert done.returncode == 0, done.stderr
    return done


def events(broker: BrokerProcess, topic: str) -> list[Event]:
    """Every event of ``topic``, read with fetch (no group)."""
    conn = Connection(broker.api, timeout_s=5.0)
    got: list[Event] = []
    try:
        for info in conn.call(p.Metadata(topics=[topic])).topics[0].partitions:
            offset = info.start_offset
            while offset < info.end_offset:
                batch = events_of_fetch(conn.call(p.Fetch(topic=topic, partition=info.partition,
                                                          offset=offset)))
                got.extend(batch)
                offset = batch[-1].offset + 1
    finally:
        conn.close()
    return got


def create_topic(broker: BrokerProcess, topic: str, partitions: int = 1) -> None:
    conn = Connection(broker.api, timeout_s=5.0)
    try:
        conn.call(p.CreateTopic(topic=topic, partitions=partitions))
    finally:
        conn.close()


def one_line(text: str) -> Any:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]
