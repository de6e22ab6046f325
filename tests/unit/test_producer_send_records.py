"""``Producer.send_records`` puts the same batches on the wire as ``send`` called once a
record: the same partitions, sequence numbers, records and cuts between batches and
requests (the broker's idempotence and ordering rest on those).  Both producers talk to
the fake broker of test_producer_ordering, which checks sequences as the broker does."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from brokerd import protocol as p
from runtime.producer import Producer
from tests.unit.test_producer_ordering import FakeBroker

Record = tuple[Any, Any, dict[str, Any] | None]


def driven(fake: FakeBroker, batch_size: int, partitions: int, linger_ms: float) -> Producer:
    """A producer on ``fake``, its linger thread stopped, the topic "t" known to have
    ``partitions`` and its sticky partition fixed (so both producers pick the same)."""
    producer = Producer("tcp://127.0.0.1:9", linger_ms=0, batch_size=batch_size,
                        request_timeout_s=60)
    with producer._lock:
        producer._closed = True
        producer._work.set()
    producer._linger.join(timeout=5)  # at linger 0 it sleeps 5 ms, not the linger, first
    producer.linger_s = linger_ms / 1000
    producer.conn.close()
    producer.conn = fake  # type: ignore[assignment]
    producer._partitions["t"] = partitions
    producer._sticky["t"] = 0
    return producer


def wire(fake: FakeBroker) -> list[tuple[Any, ...]]:
    """What reached the fake broker, request by request, without the producer id."""
    return [(r["id"], r["topic"], r["partition"], r["sequence"], r["records"])
            for r in fake.sent]


def by_send(records: list[Record], batch_size: int, partitions: int,
            partition: int | None, linger_ms: float = 1000.0) -> FakeBroker:
    fake = FakeBroker()
    producer = driven(fake, batch_size, partitions, linger_ms)
    for key, value, headers in records:
        producer.send("t", value, key=key, headers=headers, partition=partition)
    producer.flush(timeout_s=5)
    assert not producer.errors
    return fake


def by_send_records(records: list[Record], chunks: list[int], batch_size: int,
                    partitions: int, partition: int | None,
                    linger_ms: float = 1000.0) -> FakeBroker:
    fake = FakeBroker()
    producer = driven(fake, batch_size, partitions, linger_ms)
    start = 0
    for size in chunks + [len(records)]:  # the calls' sizes; the last takes the rest
        producer.send_records("t", records[start:start + size], partition=partition)
        start += size
    producer.flush(timeout_s=5)
    assert not producer.errors
    return fake


keys = st.one_of(st.none(), st.integers(0, 50), st.binary(max_size=4), st.text(max_size=3))
headers = st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "rail.src"]),
                                                st.integers(-100, 100), max_size=2))
records_st = st.lists(st.tuples(keys, st.integers(-1000, 1000), headers), max_size=120)


@settings(max_examples=60, deadline=None)
@given(records=records_st, chunks=st.lists(st.integers(0, 40), max_size=6),
       batch_size=st.integers(1, 17), partitions=st.sampled_from([1, 3, 8]),
       fixed=st.booleans())
def test_the_wire_is_the_same_as_a_send_per_record(records: list[Record], chunks: list[int],
                                                   batch_size: int, partitions: int,
                                                   fixed: bool) -> None:
    partition = partitions - 1 if fixed else None
    expected = by_send(records, batch_size, partitions, partition)
    got = by_send_records(records, chunks, batch_size, partitions, partition)

    assert wire(got) == wire(expected)
    assert got.stored == expected.stored


def test_keyed_records_go_to_their_keys_partitions_in_order_each_once() -> None:
    rng = random.Random(7)
    records: list[Record] = [(rng.randrange(40), i, {"n": i}) for i in range(3000)]
    fake = by_send_records(records, [1000, 1000], batch_size=64, partitions=8, partition=None)

    for partition in range(8):
        want = [i for key, i, _ in records if p.partition_for_key(key, 8) == partition]
        assert fake.stored[("t", partition)] == want
    sequences: dict[int, int] = {}
    for request in fake.sent:  # each partition numbered from 0 without a hole
        assert request["sequence"] == sequences.get(request["partition"], 0)
        sequences[request["partition"]] = request["sequence"] + len(request["records"])


def test_with_linger_zero_a_calls_records_ship_at_its_end() -> None:
    records: list[Record] = [(None, i, None) for i in range(10)]
    fake = by_send_records(records, [], batch_size=4, partitions=1, partition=None,
                           linger_ms=0)

    assert fake.stored[("t", 0)] == list(range(10))
    assert [len(r["records"]) for r in fake.sent] == [4, 4, 2]
