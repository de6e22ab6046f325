"""The file source: every line reaches the topic exactly once, across kill -9, rotation
and truncation."""

from __future__ import annotations

import os
import time

from brokerd import protocol as p
from runtime.client import Producer
from runtime.connect.offsets import record_headers
from runtime.connection import Connection
from tests.connect.tasks import Task, count, read_topic, write_lines
from tests.helpers import wait_for


def entry(path, topic="lines", **extra):
    return {"name": "lines-in", "kind": "source", "class": "file", "topics": [topic],
            "config": {"path": str(path)}, **extra}


def ids(broker, topic="lines"):
    return sorted(e.value["id"] for e in read_topic(broker, topic))


def test_a_file_source_killed_mid_file_resumes_without_loss_or_duplicates(broker, tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(path, 0, 60_000, "w")
    settings = entry(path, batch=200)
    task = Task(settings, broker.api, tmp_path / "task.log")
    try:
        for at in (5_000, 20_000, 40_000):  # three kills at different points of the file
            wait_for(lambda at=at: count(broker.api, "lines") > at, 30, 0.01, f"{at} records")
            task.kill9()
            assert count(broker.api, "lines") < 60_000, "the kill came too late to matter"
            task = Task(settings, broker.api, tmp_path / "task.log")
        write_lines(path, 60_000, 61_000)
        wait_for(lambda: count(broker.api, "lines") >= 61_000, 60, 0.1, "every line")
        time.sleep(0.3)  # anything repeated would land now
        assert ids(broker.api) == list(range(61_000))
    finally:
        task.stop()
    assert task.proc.returncode == 0, task.log()


def test_rotation_and_truncation_lose_and_repeat_nothing(broker, tmp_path):
    path = tmp_path / "app.log"
    write_lines(path, 0, 100, "w")
    settings = entry(path)
    task = Task(settings, broker.api, tmp_path / "task.log")
    try:
        wait_for(lambda: len(ids(broker.api)) == 100, 20, 0.05, "the first file")
        write_lines(path, 100, 150)
        os.rename(path, tmp_path / "app.log.1")  # rotation: lines 100-149 are in the old file
        write_lines(path, 150, 200, "w")
        wait_for(lambda: len(ids(broker.api)) == 200, 20, 0.05, "the rotated and new file")
        os.truncate(path, 0)  # copytruncate
        write_lines(path, 200, 210)
        wait_for(lambda: len(ids(broker.api)) >= 210, 20, 0.05, "lines after the truncation")
        task.stop()
        # rotated again while the task was down: the rest of the old file comes first
        write_lines(path, 210, 220)
        os.rename(path, tmp_path / "app.log.2")
        write_lines(path, 220, 230, "w")
        task = Task(settings, broker.api, tmp_path / "task.log")
        wait_for(lambda: len(ids(broker.api)) >= 230, 20, 0.05, "lines after the restart")
        time.sleep(0.3)
        assert ids(broker.api) == list(range(230))
    finally:
        task.stop()


def test_a_source_writing_to_three_partitions_resumes_exactly_after_kill_9(broker, tmp_path):
    """Keyed records spread over three partitions: a kill can land after one partition's
    batch is stored and before another's; the resume fills the hole and repeats nothing."""
    conn = Connection(broker.api)
    conn.call(p.CreateTopic(topic="spread", partitions=3))
    conn.close()
    path = tmp_path / "in.jsonl"
    write_lines(path, 0, 60_000, "w")
    settings = entry(path, topic="spread", batch=300,
                     transforms=[{"type": "key", "field": "id"}])
    task = Task(settings, broker.api, tmp_path / "task.log")
    try:
        for at in (4_000, 15_000, 30_000, 45_000):
            wait_for(lambda at=at: count(broker.api, "spread") > at, 30, 0.005, f"{at} records")
            task.kill9()
            task = Task(settings, broker.api, tmp_path / "task.log")
        wait_for(lambda: count(broker.api, "spread") >= 60_000, 60, 0.1, "every line")
        time.sleep(0.3)
        assert ids(broker.api, "spread") == list(range(60_000))
    finally:
        task.stop()


def test_a_hole_left_by_a_batch_that_never_arrived_is_filled_and_nothing_repeated(
        broker, tmp_path):
    """The state a kill between two partitions' batches of one flush leaves: lines 0 and 2
    stored in partition 0, line 1 (bound for partition 1) lost.  The restarted source
    sends line 1 and the lines after 2, not 0 or 2 again."""
    conn = Connection(broker.api)
    conn.call(p.CreateTopic(topic="holes", partitions=2))
    conn.close()
    path = tmp_path / "in.jsonl"
    write_lines(path, 0, 10, "w")
    ends, pos = [], 0
    for line in path.read_bytes().splitlines(keepends=True):
        pos += len(line)
        ends.append(pos)
    ino = os.stat(path).st_ino
    with Producer(broker.api) as producer:
        for seq, line in ((1, 0), (3, 2)):
            producer.send("holes", {"id": line, "name": f"row-{line}"}, key=str(line),
                          partition=0, headers=record_headers("lines-in/0", seq, str(path),
                                                              [ino, ends[line]]))
    task = Task(entry(path, topic="holes", transforms=[{"type": "key", "field": "id"}]),
                broker.api, tmp_path / "task.log")
    try:
        wait_for(lambda: count(broker.api, "holes") >= 10, 20, 0.05, "every line")
        time.sleep(0.3)
    finally:
        task.stop()
    assert ids(broker.api, "holes") == list(range(10))


def test_a_source_routes_to_its_topics_only_and_dead_letters_the_rest(broker, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(f'{{"id": {i}, "to": "{t}"}}\n' for i, t in enumerate("abcab")))
    settings = {"name": "router", "kind": "source", "class": "file", "topics": ["a", "b"],
                "errors": {"tolerance": "all"},
                "transforms": [{"type": "route", "field": "to"}],
                "config": {"path": str(path)}}
    task = Task(settings, broker.api, tmp_path / "task.log")
    try:
        wait_for(lambda: count(broker.api, "a") + count(broker.api, "b") == 4
                 and count(broker.api, "a.dlq") == 1, 20, 0.05, "routed lines")
    finally:
        task.stop()
    assert [e.value["id"] for e in read_topic(broker.api, "a")] == [0, 3]
    assert [e.value["id"] for e in read_topic(broker.api, "b")] == [1, 4]
    dead = read_topic(broker.api, "a.dlq")
    assert "'c' is not among the connector's topics" in dead[0].headers["rail.error"]
