"""The JSONL sink writes every event's value as a line and rolls files by size."""

from __future__ import annotations

import json

from runtime.client import Producer
from tests.connect.tasks import Task
from tests.helpers import wait_for


def lines(folder):
    out = []
    for f in sorted(folder.glob("out.jsonl*"), key=lambda f: (f.name == "out.jsonl", f.stat().st_mtime_ns)):
        out.extend(json.loads(line) for line in f.read_text().splitlines())
    return out


def test_a_jsonl_sink_writes_every_value_and_rolls_by_size(broker, tmp_path):
    folder = tmp_path / "out"
    entry = {"name": "to-file", "kind": "sink", "class": "jsonl", "topics": ["events"],
             "batch": 100, "linger_ms": 5,
             "config": {"path": str(folder / "out.jsonl"), "roll_mb": 0.01}}
    with Producer(broker.api) as producer:
        for i in range(2000):
            producer.send("events", {"i": i, "pad": "x" * 20})
    task = Task(entry, broker.api, tmp_path / "sink.log")
    try:
        wait_for(lambda: len(lines(folder)) >= 2000, 20, 0.05, "every line")
    finally:
        task.stop()
    assert task.proc.returncode == 0, task.log()
    assert [v["i"] for v in lines(folder)] == list(range(2000))
    assert len(list(folder.glob("out.jsonl.*"))) >= 3, "no roll by size"
