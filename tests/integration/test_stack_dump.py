"""kill -USR1 on a broker or a worker prints every thread's Python stack to its log and
leaves it running: what to look at when one seems stuck (a test that times out sends it
to the process it waited on)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.connect.tasks import Task
from tests.helpers import start_broker, wait_for
from tests.integration.wire import RawClient


def test_sigusr1_dumps_the_stacks_of_a_broker_and_a_worker_which_keep_serving(
        tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "data")
    try:
        (tmp_path / "in.jsonl").write_text('{"n": 1}\n')
        entry = {"name": "lines-in", "kind": "source", "class": "file", "topics": ["lines"],
                 "config": {"path": str(tmp_path / "in.jsonl")}}
        task = Task(entry, broker.api, tmp_path / "task.log")
        try:
            with RawClient(broker.api) as raw:
                wait_for(lambda: raw.call("metadata", topics=["lines"]).get("op") == "metadata"
                         and raw.ok("metadata", topics=["lines"])["topics"][0]["partitions"][0]
                         ["end_offset"] == 1, 30, 0.05, "the line in the topic")
            os.kill(broker.pid, signal.SIGUSR1)
            os.kill(task.proc.pid, signal.SIGUSR1)
            wait_for(lambda: "Thread 0x" in broker.log() and "Thread 0x" in task.log(), 10,
                     0.05, "the stacks in the logs")
            assert "brokerd" in broker.log().split("Thread 0x", 1)[1]  # its own frames
            assert "runtime" in task.log().split("Thread 0x", 1)[1]
            with RawClient(broker.api) as raw:
                assert raw.ok("ping")["op"] == "ping"
            assert task.proc.poll() is None
        finally:
            assert task.stop() == 0, task.log()[-2000:]
    finally:
        broker.stop()
