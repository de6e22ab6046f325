"""``Consumer.poll_batches``, the fast path: the records of a poll without an ``Event`` each.

Against a real broker: the batches hold exactly what ``poll`` delivers (same offsets,
values, keys, headers and timestamps), move the positions that ``commit`` commits, and
start where a seek asked even inside a stored batch; a fetch reply's batches
(``batches_of_fetch``, the cluster consumer's path) start at the offset asked for.
"""

from __future__ import annotations

import time
from typing import Any

from brokerd import protocol as p
from runtime.connection import Connection
from runtime.consumer import Batch, Consumer, batches_of_fetch, events_of_fetch
from runtime.producer import Producer
from tests.helpers import BrokerProcess

TOPIC = "fast"


def _produce(api: str, partitions: int, count: int) -> None:
    """``count`` records: every third bare (the broker stamps its time), the others with a
    key, a header and a timestamp of their own."""
    with Producer(api, acks="all") as producer:
        producer._call(p.CreateTopic(topic=TOPIC, partitions=partitions, exist_ok=True))
        for i in range(count):
            if i % 3 == 0:
                producer.send(TOPIC, {"n": i}, partition=i % partitions)
            else:
                producer.send(TOPIC, {"n": i}, key=f"k{i}", headers={"h": str(i)},
                              partition=i % partitions, timestamp=1_000 + i)
        producer.flush()


def _drain(consumer: Consumer, count: int, fast: bool) -> list[Any]:
    """(partition, offset, value, key, headers, timestamp) of ``count`` records."""
    got: list[Any] = []
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        if fast:
            for batch in consumer.poll_batches(0.5):
                assert isinstance(batch, Batch) and batch.records
                assert batch.end_offset >= batch.base_offset + len(batch.records)
                for offset, r in enumerate(batch.records, batch.base_offset):
                    ts = batch.timestamp if r.timestamp is None else r.timestamp
                    got.append((batch.partition, offset, r.value, r.key, r.headers, ts))
        else:
            got.extend((e.partition, e.offset, e.value, e.key, e.headers, e.timestamp)
                       for e in consumer.poll(0.5))
    return got


def test_poll_batches_delivers_exactly_what_poll_delivers(broker: BrokerProcess) -> None:
    _produce(broker.api, 3, 3000)
    with Consumer(broker.api, group="fast", topics=[TOPIC]) as fast, \
            Consumer(broker.api, group="slow", topics=[TOPIC]) as slow:
        batches = _drain(fast, 3000, fast=True)
        events = _drain(slow, 3000, fast=False)
    assert len(batches) == 3000
    assert sorted(batches) == sorted(events)
    assert {(part, off) for part, off, *_ in batches} == \
        {(part, off) for part in range(3) for off in range(1000)}
    bare = [b for b in batches if b[2]["n"] % 3 == 0]
    assert all(b[3] is None and b[4] is None and b[5] > 1_000_000 for b in bare)
    own = [b for b in batches if b[2]["n"] % 3 != 0]
    assert all(b[3] == f"k{b[2]['n']}" and b[5] == 1_000 + b[2]["n"] for b in own)


def test_a_member_after_poll_batches_and_commit_resumes_where_it_ended(
        broker: BrokerProcess) -> None:
    _produce(broker.api, 2, 400)
    with Consumer(broker.api, group="resume", topics=[TOPIC]) as first:
        got = _drain(first, 400, fast=True)
        first.commit()
        assert first.committed == {(TOPIC, 0): 200, (TOPIC, 1): 200}
    _produce(broker.api, 2, 10)
    with Consumer(broker.api, group="resume", topics=[TOPIC]) as second:
        more = _drain(second, 10, fast=True)
        assert second.poll_batches(0.3) == []
    assert sorted((part, off) for part, off, *_ in more) == \
        [(part, off) for part in range(2) for off in range(200, 205)]
    assert sorted((part, off) for part, off, *_ in got) == \
        [(part, off) for part in range(2) for off in range(200)]


def test_a_seek_into_a_stored_batch_starts_the_next_batch_there(broker: BrokerProcess) -> None:
    with Producer(broker.api, acks="all") as producer:
        producer._call(p.CreateTopic(topic=TOPIC, partitions=1, exist_ok=True))
        producer.send_many(TOPIC, list(range(100)))  # one stored batch
        producer.flush()
    with Consumer(broker.api, group="seek", topics=[TOPIC]) as consumer:
        assert len(_drain(consumer, 100, fast=True)) == 100
        consumer.seek(TOPIC, 0, 37)
        again = _drain(consumer, 63, fast=True)
        consumer.seek(TOPIC, 0, 99)
        assert [b.end_offset for b in consumer.poll_batches(5)] == [100]  # the log's end
        assert consumer.positions[(TOPIC, 0)] == 100
    assert [(off, value) for _, off, value, *_ in again] == [(i, i) for i in range(37, 100)]


def test_a_fetch_replys_batches_start_at_the_offset_asked_for(broker: BrokerProcess) -> None:
    with Producer(broker.api, acks="all") as producer:
        producer._call(p.CreateTopic(topic=TOPIC, partitions=1, exist_ok=True))
        producer.send_many(TOPIC, list(range(50)))
        producer.flush()
    conn = Connection(broker.api)
    try:
        reply = conn.call(p.Fetch(topic=TOPIC, partition=0, offset=20, max_bytes=1 << 20))
    finally:
        conn.close()
    batches = batches_of_fetch(reply)
    assert batches[0].base_offset == 20 and batches[-1].end_offset == 50
    assert [r.value for b in batches for r in b.records] == list(range(20, 50))
    events = events_of_fetch(reply)
    assert [(e.offset, e.value) for e in events] == [(i, i) for i in range(20, 50)]
    assert all(e.timestamp == batches[0].timestamp for e in events)
