"""A connector written against the documented interface (examples/connect/counter_source.py)
runs as a task and resumes after the last number it stored."""

from __future__ import annotations

import shutil

from tests.connect.tasks import Task, read_topic
from tests.helpers import ROOT, wait_for


def test_the_example_counter_source_resumes_after_its_last_stored_number(broker, tmp_path):
    shutil.copy(ROOT / "examples" / "connect" / "counter_source.py", tmp_path)
    entry = {"name": "counter", "kind": "source", "class": "counter_source:CounterSource",
             "topics": ["numbers"], "config": {"limit": 300}}
    task = Task(entry, broker.api, tmp_path / "counter.log", cwd=tmp_path)
    try:
        wait_for(lambda: len(read_topic(broker.api, "numbers")) >= 300, 20, 0.05, "300")
        task.stop()
        entry["config"]["limit"] = 500
        task = Task(entry, broker.api, tmp_path / "counter.log", cwd=tmp_path)
        wait_for(lambda: len(read_topic(broker.api, "numbers")) >= 500, 20, 0.05, "500")
    finally:
        task.stop()
    assert task.proc.returncode == 0, task.log()
    assert [e.value["n"] for e in read_topic(broker.api, "numbers")] == list(range(1, 501))
