"""``Producer.send_records`` against a real broker: keyed records land in their keys'
partitions, in order, with their headers, each once, also when the broker stalls long
enough for every request in flight to be resent (its idempotence check drops the copies)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

from brokerd import protocol as p
from runtime.client import BrokerError, Producer
from runtime.connection import Connection
from tests.helpers import BrokerProcess
from tests.integration.wire import RawClient, read_partition

PARTITIONS = 4


def create(broker: BrokerProcess, topic: str) -> None:
    conn = Connection(broker.api)
    try:
        conn.call(p.CreateTopic(topic=topic, partitions=PARTITIONS))
    finally:
        conn.close()


def stored(broker: BrokerProcess, topic: str) -> dict[int, list[list[Any]]]:
    with RawClient(broker.api) as raw:
        return {part: [record for _, record in read_partition(raw, topic, part)]
                for part in range(PARTITIONS)}


def check(records: list[tuple[Any, Any, dict[str, Any] | None]],
          got: dict[int, list[list[Any]]]) -> None:
    """Every record in its key's partition (keyless ones anywhere), once, in send order
    within its partition, with its key and headers."""
    seen = {}
    for part, rows in got.items():
        values = [row[0] for row in rows]
        assert values == sorted(values), f"partition {part} out of order"
        for value, key, headers, _ in rows:
            assert value not in seen, f"record {value} stored twice"
            seen[value] = (part, key, headers)
    assert len(seen) == len(records)
    for key, value, headers in records:
        part, stored_key, stored_headers = seen[value]
        assert (stored_key, stored_headers) == (key, headers)
        if key is not None:
            assert part == p.partition_for_key(key, PARTITIONS)


def batch(start: int, n: int) -> list[tuple[Any, Any, dict[str, Any] | None]]:
    return [(None if i % 5 == 0 else b"k%d" % (i % 97), i,
             None if i % 3 == 0 else {"n": b"%d" % i}) for i in range(start, start + n)]


def test_keyed_records_with_headers_land_in_order_and_once(broker: BrokerProcess) -> None:
    create(broker, "many")
    records = batch(0, 20_000)
    with Producer(broker.api, batch_size=500) as producer:
        for start in range(0, len(records), 2_500):
            producer.send_records("many", records[start:start + 2_500])
        producer.flush(timeout_s=30)
        assert not producer.errors

    check(records, stored(broker, "many"))


def test_a_stalled_broker_gets_every_record_once_after_the_resends(
        broker: BrokerProcess) -> None:
    # The broker stops for longer than the request timeout: every request in flight is
    # resent, and the broker, once it runs again, reads the copies too.
    create(broker, "stall")
    records = batch(0, 12_000)
    producer = Producer(broker.api, batch_size=200, request_timeout_s=0.5)
    resume = threading.Timer(1.5, os.kill, (broker.pid, signal.SIGCONT))
    try:
        producer.send_records("stall", records[:2_000])
        os.kill(broker.pid, signal.SIGSTOP)
        resume.start()
        for start in range(2_000, len(records), 2_000):
            producer.send_records("stall", records[start:start + 2_000])
        producer.flush(timeout_s=60)
        assert not producer.errors
    finally:
        resume.cancel()
        os.kill(broker.pid, signal.SIGCONT)
        with contextlib.suppress(BrokerError):
            producer.close(timeout_s=5)

    check(records, stored(broker, "stall"))
