"""Rail Connect on a cluster: a file source given the endpoint list keeps its offsets in
the replicated ``_connect-offsets`` and writes every line once through a kill -9 of the
leader of its topic mid-file, and a kill -9 of the task itself (restarted, it resumes from
the offsets the cluster kept)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster.client import wait_in_sync
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.connect.tasks import Task, count, read_topic, write_lines
from tests.helpers import wait_for
from tests.integration.wire import RawClient

LINES = 60_000


def test_a_file_source_on_a_cluster_writes_each_line_once_through_leader_and_task_kills(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        every = ",".join(apis)
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="lines", partitions=1)
        leader = wait_in_sync(apis, "lines", 1, 3)[0]
        path = tmp_path / "in.jsonl"
        half = LINES // 2
        write_lines(path, 0, half, "w")
        settings = {"name": "lines-in", "kind": "source", "class": "file", "topics": ["lines"],
                    "config": {"path": str(path)}, "batch": 200}
        task = Task(settings, every, tmp_path / "task.log")
        try:
            wait_for(lambda: count(every, "lines") > 3_000, 60, 0.01, "3,000 lines")
            brokers[leader].kill9()  # the topic's leader, mid-file
            assert count(every, "lines") < half, "the kill came too late to matter"
            wait_for(lambda: count(every, "lines") >= half, 90, 0.05, "the first half")
            task.kill9()  # and the task itself, its offsets kept by the cluster
            write_lines(path, half, LINES)  # the rest comes while it is down
            task = Task(settings, every, tmp_path / "task.log")
            wait_for(lambda: count(every, "lines") >= LINES, 90, 0.1, "every line")
            time.sleep(0.5)  # anything repeated would land now
            ids = sorted(e.value["id"] for e in read_topic(every, "lines"))
            assert ids == list(range(LINES)), (len(ids), len(set(ids)))
        finally:
            task.stop()
        assert task.proc.returncode == 0, task.log()[-3000:]
    finally:
        for b in brokers:
            b.stop()
