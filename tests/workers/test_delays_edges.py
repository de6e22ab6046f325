"""Delayed events and schedules given odd input: parked events and cancel markers written by
another client (bytes headers, headers missing), targets and schedule topics that are not
topic names, durations that are not finite; and a partition the mover loses and gets back
while a cancel of an event it holds is read by another mover."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from brokerd import protocol as p
from runtime.client import Producer
from runtime.config import ConfigError, load_config
from runtime.connection import Connection
from runtime.dlq import read_all
from runtime.worker import Hosted, Options
from runtime.worker.delays import CANCEL, DELAY_ID, DELAY_TOPIC, DUE, MOVER_GROUP, TARGET
from runtime.worker.mover import Mover
from tests.helpers import wait_for


def mover(api: str, member: str = "") -> Mover:
    return Mover(Hosted(Options(broker=api, group=MOVER_GROUP, topics=[DELAY_TOPIC],
                                name=member or "mover", member_id=member),
                        logging.getLogger("test")))


def close(*movers: Mover) -> None:
    for m in movers:
        m.consumer.close()
        m.conn.close()


def run_until(m: Mover, done: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        m.step()


def topics(conn: Connection) -> set[str]:
    return {t.name for t in conn.call(p.Metadata()).topics}


def values(conn: Connection, topic: str) -> list[Any]:
    return sorted(e.value for e in read_all(conn, topic)) if topic in topics(conn) else []


def test_parked_events_of_another_client_are_read_with_bytes_headers_or_none(broker) -> None:
    """Bytes headers work as text; a parked event without ``rail.delay.topic`` (or with a
    target that is no topic name) is logged and dropped, not forwarded to a topic named
    ``None`` (the broker takes only str or bytes header values)."""
    conn = Connection(broker.api)
    conn.call(p.CreateTopic(topic=DELAY_TOPIC, partitions=1, exist_ok=True))
    due = str(int(time.time() * 1000)).encode()
    with Producer(broker.api) as producer:
        for value, headers in (
                ("kept", {TARGET: b"orders", DUE: due, DELAY_ID: b"0-" + b"a" * 32}),
                ("dropped", {TARGET: b"orders", DUE: due, DELAY_ID: b"0-" + b"b" * 32}),
                ("stray", {"trace": "t1"}),  # no parking headers at all
                ("bad target", {TARGET: "../etc", DUE: due})):
            producer.send(DELAY_TOPIC, value, partition=0, headers=headers)
        producer.send(DELAY_TOPIC, None, partition=0, headers={CANCEL: b"0-" + b"b" * 32})
        producer.flush()
    m = mover(broker.api)
    try:
        run_until(m, lambda: m.host.processed + m.cancelled >= 4, "all five read")
        assert m.cancelled == 1
    finally:
        close(m)
    try:
        assert values(conn, "orders") == ["kept"]
        assert "None" not in topics(conn) and "" not in topics(conn)
        assert m.host.failed == 2  # stray and bad target: logged, dropped
    finally:
        conn.close()


@pytest.mark.parametrize("topic", ["../etc", "x" * 300, "", DELAY_TOPIC])
def test_send_delayed_refuses_a_topic_name_a_send_would_refuse(broker, topic: str) -> None:
    """Refused when sent, as a plain send is, not logged and dropped once it falls due."""
    with Producer(broker.api) as producer:
        with pytest.raises(ValueError, match="cannot delay an event for topic"):
            producer.send_delayed(topic, "x", delay_s=1)
        producer.flush()
    conn = Connection(broker.api)
    try:
        assert DELAY_TOPIC not in topics(conn) or read_all(conn, DELAY_TOPIC) == []
    finally:
        conn.close()


@pytest.mark.parametrize(("body", "error"), [
    ('topic = "../etc"\nevery = "1s"', "schedules.beat.topic: "),
    (f'topic = "{"x" * 300}"\nevery = "1s"', "schedules.beat.topic: "),
    (f'topic = "{DELAY_TOPIC}"\nevery = "1s"', "schedules.beat.topic: "),
    ('topic = "t"\nevery = "1s"\ncatch_up = inf', "schedules.beat.catch_up: "),
    ('topic = "t"\nevery = nan', "schedules.beat.every: "),
    ('topic = "t"\nevery = 1e400', "schedules.beat.every: "),
    (f'topic = "t"\nevery = "{"9" * 400}s"', "schedules.beat.every: "),
])
def test_a_schedule_with_a_bad_topic_or_an_endless_duration_is_a_config_error(
        tmp_path: Path, body: str, error: str) -> None:
    (tmp_path / "rail.toml").write_text(f"[schedules.beat]\n{body}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "rail.toml")
    assert error in str(caught.value), caught.value


def test_a_cancel_read_by_another_mover_holds_when_the_partition_comes_back(broker) -> None:
    """Mover a holds an event in each of two partitions; b joins and gets one of them, reads
    its event and the event's cancel, commits past both and leaves, all while a does not
    poll.  a then learns both rebalances in one poll (its other partition got an event in
    each generation): it keeps the partition b had, and must not forward the event it
    still holds there (it did: the cancel lies below b's commit, a never reads it)."""
    conn = Connection(broker.api)
    conn.call(p.CreateTopic(topic=DELAY_TOPIC, partitions=2, exist_ok=True))
    keys = {p.partition_for_key(f"k{i}", 2): f"k{i}" for i in range(10)}
    a = mover(broker.api, "a")
    b: Mover | None = None
    try:
        with Producer(broker.api) as producer:
            ids = {part: producer.send_delayed("orders", part, key=keys[part], delay_s=1.5)
                   for part in (0, 1)}
            producer.flush()
            run_until(a, lambda: len(a.heap) == 2, "a holds both events")
            generation = a.consumer.generation
            b = mover(broker.api, "b")  # a does not poll: it sees no rebalance yet
            [(_, moved)] = b.consumer.assignment
            producer.cancel_delayed(ids[moved])
            producer.send_delayed("orders", "far", key=keys[1 - moved], delay_s=3600)
            producer.flush()
            run_until(b, lambda: b is not None and b.cancelled == 1, "b reads the cancel")
            b.commit(sync=True)
            close(b)
            b = None
            wait_for(lambda: conn.call(p.DescribeGroup(group=MOVER_GROUP)).generation ==
                     generation + 2, timeout=10, what="the partition back with a")
            producer.send_delayed("orders", "far", key=keys[1 - moved], delay_s=3600)
            producer.flush()
        time.sleep(0.2)  # both replies reach a's socket: one poll takes them
        run_until(a, lambda: 1 - moved in values(conn, "orders"), "the other event")
        assert a.consumer.generation == generation + 2
        deadline = time.monotonic() + 1.0  # a forward of the cancelled one would come now
        while time.monotonic() < deadline:
            a.step()
        assert values(conn, "orders") == [1 - moved]
    finally:
        close(a, *([b] if b is not None else []))
        conn.close()
