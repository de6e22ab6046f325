"""Start connector tasks the way the supervisor does (python -m runtime.worker task.py with
the entry in $RAIL_CONNECTOR) and read topics back, for the connect tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.client import Event, events_of_fetch
from runtime.connect.settings import TASK_SCRIPT, env_name, parse
from runtime.routing import connect
from tests.helpers import ROOT, kill9_process, python_env, stop_process


class Task:
    """One connector task process, its output in ``log_path``; stopped by pid."""

    def __init__(self, entry: dict[str, Any], broker: str, log_path: Path, index: int = 0,
                 cwd: Path = ROOT) -> None:
        settings = parse(entry)
        self.log_path = log_path
        env = {**python_env(), env_name(settings.name): json.dumps(msgspec.to_builtins(settings))}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runtime.worker", TASK_SCRIPT, "--broker", broker,
                 "--group", settings.group, "--topics", ",".join(settings.topics),
                 "--name", settings.name, "--member-id", f"{settings.name}-{index}"],
                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 15.0) -> int:
        return stop_process(self.proc, timeout)

    def kill9(self) -> None:
        kill9_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def read_topic(broker: str, topic: str) -> list[Event]:
    """Every event of every partition of ``topic`` (none if it does not exist); ``broker``
    may be a cluster's endpoint list."""
    conn = connect(broker)
    try:
        try:
            meta = conn.call(p.Metadata(topics=[topic]))
        except Exception:  # noqa: BLE001 - UNKNOWN_TOPIC: nothing there yet
            return []
        out: list[Event] = []
        for part in meta.topics[0].partitions:
            offset = part.start_offset
            while offset < part.end_offset:
                reply = conn.call(p.Fetch(topic=topic, partition=part.partition, offset=offset,
                                          max_bytes=8 * 1024 * 1024))
                got = events_of_fetch(reply)
                if not got:
                    break
                out.extend(got)
                offset = got[-1].offset + 1
        return out
    finally:
        conn.close()


def count(broker: str, topic: str) -> int:
    """Records in ``topic`` by its end offsets (cheap: no records are read)."""
    conn = connect(broker)
    try:
        meta = conn.call(p.Metadata(topics=None))
        return sum(part.end_offset for t in meta.topics if t.name == topic
                   for part in t.partitions)
    finally:
        conn.close()


def write_lines(path: Path, start: int, stop: int, mode: str = "a") -> None:
    with open(path, mode) as f:
        f.writelines(json.dumps({"id": i, "name": f"row-{i}"}) + "\n" for i in range(start, stop))
