"""A producer writing to a thousand partitions at once: every batch reaches the broker in
its partition's order, so none waits out a request timeout and none is refused as out of
order (issue 11)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

from brokerd import protocol as p
from runtime.client import BrokerError, Producer
from runtime.connection import Connection
from tests.helpers import BrokerProcess
from tests.integration.wire import RawClient, read_partition

PARTITIONS = 1000
REQUEST_TIMEOUT_S = 20.0  # a stall of one request timeout is unmistakable


def create(broker: BrokerProcess, topic: str) -> None:
    conn = Connection(broker.api)
    try:
        conn.call(p.CreateTopic(topic=topic, partitions=PARTITIONS, config={"fsync": "never"}))
    finally:
        conn.close()


def counts(broker: BrokerProcess) -> dict[str, int]:
    conn = Connection(broker.api)
    try:
        counted = conn.call(p.Stats()).stats["counts"]
    finally:
        conn.close()
    return {"out of order": counted["error.OUT_OF_ORDER_SEQUENCE"],
            "replies dropped": counted["replies_dropped"]}


def stored(broker: BrokerProcess, topic: str, partition: int) -> list[Any]:
    with RawClient(broker.api) as raw:
        return [record[0] for _, record in read_partition(raw, topic, partition)]


def test_batches_sent_while_the_broker_is_stopped_reach_it_in_order_without_a_timeout(
        broker: BrokerProcess) -> None:
    # 16 batches of 2 KB to each of 1,000 partitions (32 MB) while the broker is stopped:
    # far more than ZeroMQ's queue and the TCP buffers hold.  A batch that could not be
    # queued used to leave a hole in its partition's sequence, found only by the request
    # timeout (or by an OUT_OF_ORDER_SEQUENCE, if a later batch of it went out).
    create(broker, "stopped")
    value = "v" * 2048
    producer = Producer(broker.api, linger_ms=0, request_timeout_s=REQUEST_TIMEOUT_S)
    resume = threading.Timer(1.0, os.kill, (broker.pid, signal.SIGCONT))
    try:
        os.kill(broker.pid, signal.SIGSTOP)
        resume.start()
        for n in range(16):
            for partition in range(PARTITIONS):
                producer.send("stopped", [n, value], partition=partition)
        resume.join()
        resumed_at = time.monotonic()
        producer.flush(timeout_s=REQUEST_TIMEOUT_S * 2)
        took = time.monotonic() - resumed_at
        assert not producer.errors
    finally:
        resume.cancel()
        os.kill(broker.pid, signal.SIGCONT)
        with contextlib.suppress(BrokerError):
            producer.close(timeout_s=1)

    assert took < REQUEST_TIMEOUT_S / 2, f"the flush took {took:.1f} s: a batch waited out " \
                                         "the request timeout"
    for partition in (0, 1, PARTITIONS // 2, PARTITIONS - 1):
        assert [v[0] for v in stored(broker, "stopped", partition)] == list(range(16))
    assert counts(broker) == {"out of order": 0, "replies dropped": 0}


def test_keyed_events_to_a_thousand_partitions_arrive_in_order_and_once(
        broker: BrokerProcess) -> None:
    create(broker, "keyed")
    events = 30_000
    with Producer(broker.api, request_timeout_s=REQUEST_TIMEOUT_S) as producer:
        started = time.monotonic()
        for i in range(events):
            producer.send("keyed", i, key=b"k%d" % (i % 3000))
        producer.flush()
        took = time.monotonic() - started
        assert not producer.errors

    assert took < REQUEST_TIMEOUT_S / 2, f"{events} keyed events took {took:.1f} s"
    assert counts(broker) == {"out of order": 0, "replies dropped": 0}
    for key in (0, 1, 2999):
        partition = p.partition_for_key(b"k%d" % key, PARTITIONS)
        values = [v for v in stored(broker, "keyed", partition) if v % 3000 == key]
        assert values == list(range(key, events, 3000))


def test_one_event_to_each_of_four_thousand_partitions_needs_no_timeout(
        broker: BrokerProcess) -> None:
    # Each flush sends 1,000 single-batch requests: one that could not be queued was found
    # only by the request timeout.  (Four topics, not issue 11's ten: creating a topic of
    # 1,000 partitions takes the broker 1-2 s.)
    topics = [f"spread-{t}" for t in range(4)]
    for topic in topics:
        create(broker, topic)
    with Producer(broker.api, request_timeout_s=REQUEST_TIMEOUT_S) as producer:
        started = time.monotonic()
        for topic in topics:
            for partition in range(PARTITIONS):
                producer.send(topic, partition, partition=partition)
            producer.flush()
        took = time.monotonic() - started
        assert not producer.errors

    assert took < REQUEST_TIMEOUT_S / 2, f"{len(topics)} x {PARTITIONS} events took {took:.1f} s"
    assert counts(broker) == {"out of order": 0, "replies dropped": 0}
    assert stored(broker, "spread-3", PARTITIONS - 1) == [PARTITIONS - 1]
