"""Running pipelines as real workers for the streams tests: scripts in temp files, started
with ``python -m runtime.worker`` like the supervisor does, stopped or kill -9'd by pid."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from brokerd import protocol as p
from runtime.connection import Connection
from runtime.consumer import Event
from runtime.dlq import read_all
from runtime.producer import Producer
from tests.helpers import ROOT, BrokerProcess, python_env, wait_for

_serial = itertools.count()
CHUNK = 800  # events sent to each replica before its kill -9
PRELUDE = "from runtime.streams import Pipeline, Tumbling, Hopping, Session\n"


class Replica:
    """One worker process running ``script``, with its own state directory."""

    def __init__(self, broker: BrokerProcess, script: Path, state_dir: Path, name: str,
                 session_timeout_ms: int = 10_000, env: dict[str, str] | None = None) -> None:
        self.log_path = state_dir.parent / f"{name}-{next(_serial)}.log"
        env = {**python_env(), "RAIL_STREAMS_DIR": str(state_dir), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.worker", str(script), "--broker", broker.api,
             "--group", "unused", "--topics", "unused", "--name", name, "--member-id", name,
             "--session-timeout-ms", str(session_timeout_ms)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "a"))  # noqa: SIM115 - the child owns it

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def wait_running(self, timeout: float = 20.0) -> None:
        wait_for(lambda: "running as" in self.log() or self.proc.poll() is not None,
                 timeout=timeout, what="the pipeline to run")

    def stop(self) -> int:
        """SIGTERM once it runs (before, the signal would find Python still starting)."""
        self.wait_running()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def run_and_kill(broker: BrokerProcess, script: Path, state: Path, name: str, group: str,
                 items: list[tuple[Any, Any, int]], partitions: int, pause: float) -> bool:
    """Send ``items``, start a replica, kill -9 it ``pause`` s after it runs; True if the
    kill landed mid-stream (the group had not caught up)."""
    if pause:
        produce(broker, "orders", items, partitions)
    replica = Replica(broker, script, state, name)
    try:
        if pause:
            replica.wait_running()
            time.sleep(pause)
        else:
            # The chunk arrives once the tasks are restored, and the replica dies right
            # after its acknowledgement: in the middle of it, however fast the machine (a
            # kill timed from the restore alone came after the whole chunk under load).
            wait_for(lambda: "restored from" in replica.log(), timeout=20, interval=0.002,
                     what="a task to be restored")
            produce(broker, "orders", items, partitions)
        behind = lag(broker, group)
    finally:
        replica.kill9()
    return behind is None or behind > 0


def pause(rng: random.Random, i: int, total: int, mid_stream: int) -> float:
    """How long a replica runs before its kill -9: random, but 0 for the last chunk if no
    kill has landed mid-stream yet (so that every seed exercises a replay)."""
    return 0.0 if i + CHUNK >= total and not mid_stream else rng.uniform(0.0, 0.3)


def write_script(tmp: Path, body: str, name: str = "pipeline.py") -> Path:
    path = tmp / name
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def produce(broker: BrokerProcess, topic: str, items: list[tuple[Any, Any, int]],
            partitions: int) -> None:
    """Send (key, value, timestamp) records and wait for every ack."""
    with Producer(broker.api) as producer:
        producer._call(p.CreateTopic(topic=topic, partitions=partitions, exist_ok=True))
        for key, value, ts in items:
            producer.send(topic, value, key=key, timestamp=ts)
        producer.flush()


def read(broker: BrokerProcess, topic: str) -> list[Event]:
    conn = Connection(broker.api)
    try:
        return read_all(conn, topic)
    finally:
        conn.close()


def lag(broker: BrokerProcess, group: str) -> int | None:
    """The group's total lag (a partition without a commit lags by its end offset), or
    None while the group has no partitions."""
    conn = Connection(broker.api)
    try:
        reply = conn.call(p.DescribeGroup(group=group))
    finally:
        conn.close()
    if not reply.partitions:
        return None
    return sum(gp.end_offset - (gp.committed or 0) for gp in reply.partitions)


def wait_caught_up(broker: BrokerProcess, group: str, timeout: float = 30.0) -> None:
    wait_for(lambda: lag(broker, group) == 0, timeout=timeout, interval=0.05,
             what=f"group {group} to catch up")
