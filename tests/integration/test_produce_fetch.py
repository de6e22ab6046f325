"""Produce and fetch against a real broker: values come back as sent, in order, keyed stably."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgspec
import pytest
import zmq

from brokerd import protocol as p
from runtime.client import BrokerError, BrokerUnavailable, Consumer, Event, Producer
from runtime.connection import Connection
from tests.helpers import BrokerProcess, free_port, start_broker, wait_for
from tests.integration.wire import RawClient, read_partition

VALUES: list[Any] = [
    {"order": 7, "items": [{"pizza": "margherita", "qty": 2}, {"drink": None}],
     "deep": {"a": {"b": {"c": [1, [2, [3, {"d": True}]]]}}}},
    [1, -1, 0, 2**63 - 1, -(2**63), 2**64 - 1, 3.5, -0.25, 1e300, None, False, "", "é✓"],
    2**40, -17, 0.1, None, True, "plain text", "",
    b"\x00\xffraw bytes\x80", b"",
    {"": [], "nested": {"empty": {}, "bin": b"\x01\x02"}},
]


def consume_all(broker: BrokerProcess, topic: str, group: str, expected: int,
                timeout_s: float = 30.0) -> list[Event]:
    events: list[Event] = []
    with Consumer(broker.api, group=group, topics=[topic]) as consumer:
        def got_everything() -> bool:
            events.extend(consumer.poll(timeout_s=0.5))
            return len(events) >= expected
        wait_for(got_everything, timeout_s, what=f"{expected} events of {topic}")
        assert consumer.poll(timeout_s=0.2) == [], "more events than were produced"
    return events


def test_any_msgpack_value_key_header_and_timestamp_comes_back_as_sent(
        broker: BrokerProcess) -> None:
    sent = []
    with Producer(broker.api, acks="all") as producer:
        for i, value in enumerate(VALUES):
            key = [f"key-{i}", b"\x00bin-key", i, None, {"k": [i]}, 2.5][i % 6]
            headers = {"trace": f"t-{i}", "raw": bytes([i, 255])} if i % 2 else None
            timestamp = 1_700_000_000_000 + i if i % 3 else None
            producer.send("values", value, key=key, headers=headers, timestamp=timestamp,
                          partition=0)
            sent.append((value, key, headers, timestamp))
    before = int(time.time() * 1000)

    events = consume_all(broker, "values", "reader", len(sent))

    assert [e.offset for e in events] == list(range(len(sent)))
    for event, (value, key, headers, timestamp) in zip(events, sent):
        assert event.value == value and type(event.value) is type(value)
        assert event.key == key
        assert event.headers == headers
        if timestamp is None:
            assert abs(event.timestamp - before) < 60_000, "the broker stamps keyless times"
        else:
            assert event.timestamp == timestamp
    with RawClient(broker.api) as raw:
        stored = [record for _, record in read_partition(raw, "values", 0)]
    assert [r[0] for r in stored] == VALUES, "fetch returns the same values as poll"


def test_raw_bytes_are_stored_byte_for_byte(broker: BrokerProcess) -> None:
    blobs = [bytes(range(256)) * 40, b"", b"\xc0", msgspec.msgpack.encode({"looks": "packed"})]
    with Producer(broker.api, acks=1) as producer:
        for blob in blobs:
            producer.send("blobs", blob, key=blob[:3], partition=0)

    with RawClient(broker.api) as raw:
        stored = [record for _, record in read_partition(raw, "blobs", 0)]

    assert [r[0] for r in stored] == blobs
    assert [r[1] for r in stored] == [b[:3] for b in blobs]


def test_events_of_a_partition_come_back_in_the_order_they_were_sent(
        broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="orders", partitions=4)
    keys = [f"table-{n}" for n in range(25)]
    with Producer(broker.api, batch_size=64, linger_ms=1) as producer:
        for i in range(6000):
            key = keys[i % len(keys)]
            producer.send("orders", {"key": key, "n": i}, key=key)

    events = consume_all(broker, "orders", "kitchen", 6000)

    for partition in range(4):
        mine = [e for e in events if e.partition == partition]
        assert [e.offset for e in mine] == list(range(len(mine))), "offsets are dense"
        numbers = [e.value["n"] for e in mine]
        assert numbers == sorted(numbers), f"partition {partition} is out of send order"
    assert sorted(e.value["n"] for e in events) == list(range(6000))


def test_a_key_lands_in_the_same_partition_from_the_client_the_broker_and_ingest(
        broker: BrokerProcess) -> None:
    keys: list[Any] = ([f"customer-{n}" for n in range(60)] + [b"\x00\x01", b"", 7, -3, 2**40,
                       1.5, [1, "a"], {"m": 1}, "é✓"])
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="keyed", partitions=7)
        acked: dict[int, int] = {}

        def on_ack(i: int) -> Callable[[int, int, BrokerError | None], None]:
            def record(partition: int, _offset: int, error: BrokerError | None) -> None:
                assert error is None
                acked[i] = partition
            return record
        with Producer(broker.api) as producer:
            for i, key in enumerate(keys):
                producer.send("keyed", i, key=key, callback=on_ack(i))
        for i, key in enumerate(keys):  # unpartitioned: the broker hashes the key
            raw.ok("produce", topic="keyed", records=[[1000 + i, key]])
        push = raw.context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(broker.ingest)
        for i, key in enumerate(keys):
            if isinstance(key, str):
                push.send_multipart([b"keyed", key.encode(), f"{2000 + i}".encode()])
        push.close()
        ingested = sum(isinstance(k, str) for k in keys)

        def where() -> dict[int, int] | None:
            found = {}
            for part in range(7):
                for _, (value, _k, _h, _t) in read_partition(raw, "keyed", part):
                    number = int(value) if isinstance(value, bytes) else value
                    found[number] = part
            return found if len(found) == 2 * len(keys) + ingested else None
        placed = wait_for(where, 15, what="every keyed record")
        assert placed is not None

    for i, key in enumerate(keys):
        expected = p.partition_for_key(key, 7)
        assert acked[i] == expected, f"the client put {key!r} elsewhere"
        assert placed[i] == expected, f"the client's record of {key!r} is elsewhere"
        assert placed[1000 + i] == expected, f"the broker hashed {key!r} differently"
        if isinstance(key, str):
            assert placed[2000 + i] == expected, f"ingest hashed {key!r} differently"


# -- long poll ------------------------------------------------------------------------
def test_a_long_poll_fetch_returns_as_soon_as_data_arrives(broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw, Producer(broker.api) as producer:
        raw.ok("create_topic", topic="bell", partitions=1)
        started = time.monotonic()
        raw.send_frames([msgspec.msgpack.encode({
            "op": "fetch", "id": 99, "topic": "bell", "partition": 0, "offset": 0,
            "max_wait_ms": 10_000})])
        assert raw.recv_reply(timeout_s=0.3) is None, "the fetch waits while there is nothing"
        producer.send("bell", "ding", partition=0)
        producer.flush()
        reply = raw.recv_reply(timeout_s=10)
        waited = time.monotonic() - started

    assert reply is not None and reply["op"] == "fetch" and reply["id"] == 99
    assert [records for _, _, records in reply["batches"]] == [[["ding"]]]
    assert waited < 3.0, f"the reply took {waited:.2f} s; max_wait_ms was 10 s"


def test_a_long_poll_fetch_returns_empty_after_max_wait_ms(broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="quiet", partitions=1)
        started = time.monotonic()
        reply = raw.call("fetch", topic="quiet", partition=0, offset=0, max_wait_ms=600)
        waited = time.monotonic() - started

    assert reply["op"] == "fetch" and reply["batches"] == []
    assert 0.55 <= waited < 5.0, f"an empty long poll returned after {waited:.2f} s, not 0.6"


def test_a_group_poll_wakes_when_any_assigned_partition_gets_data(
        broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="stations", partitions=3)
    with Consumer(broker.api, group="pasta", topics=["stations"]) as consumer:
        box: dict[str, Any] = {}

        def late_send() -> None:
            with Producer(broker.api) as producer:
                wait_for(lambda: consumer._poll_id is not None, 5, what="the poll to park")
                box["sent_at"] = time.monotonic()
                producer.send("stations", "al dente", partition=2)

        sender = threading.Thread(target=late_send)
        sender.start()
        events = consumer.poll(timeout_s=10)
        returned = time.monotonic()
        sender.join(10)

    assert [(e.partition, e.value) for e in events] == [(2, "al dente")]
    assert returned - box["sent_at"] < 3.0, "the poll waited past the data's arrival"


@pytest.mark.parametrize("op_fields", [
    {"op": "fetch", "topic": "nothing-here", "partition": 0, "offset": 0},
    {"op": "list_offsets", "topic": "nothing-here", "partition": 0, "timestamp": -1},
    {"op": "metadata", "topics": ["nothing-here"]},
])
def test_an_unknown_topic_is_reported_as_unknown_topic(
        broker: BrokerProcess, op_fields: dict[str, Any]) -> None:
    fields = dict(op_fields)
    op = fields.pop("op")
    with RawClient(broker.api) as raw:
        assert raw.error_code(op, **fields) == "UNKNOWN_TOPIC"
        assert raw.ok("metadata")["topics"] == [], "asking created nothing"


def committed(raw: RawClient, group: str) -> dict[int, int]:
    return {part["partition"]: part["committed"]
            for part in raw.ok("describe_group", group=group)["partitions"]}


def test_a_consumer_streams_one_at_a_time_events_with_few_poll_requests(
        broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="drip", partitions=1)
        with Consumer(broker.api, group="sip", topics=["drip"]) as consumer, \
                Producer(broker.api, linger_ms=0) as producer:
            assert consumer.poll(timeout_s=0.3) == []
            before = raw.ok("stats")["stats"]["counts"]["requests"]
            got: list[Event] = []
            for i in range(100):  # each event alone: the parked poll answers it
                producer.send("drip", i, partition=0)
                producer.flush()
                while len(got) <= i:
                    got.extend(consumer.poll(timeout_s=5))
            requests = raw.ok("stats")["stats"]["counts"]["requests"] - before
    assert [e.value for e in got] == list(range(100))
    # 100 produces and one stats; a poll per event would add 100 more, and commits none here
    assert requests < 120, requests


def test_async_commits_within_the_interval_are_held_until_a_quiet_poll_or_close(
        broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw, Producer(broker.api) as producer:
        raw.ok("create_topic", topic="ledger", partitions=1)
        for i in range(3):
            producer.send("ledger", i, partition=0)
        producer.flush()
        consumer = Consumer(broker.api, group="clerks", topics=["ledger"],
                            commit_interval_ms=60_000)
        try:
            first = consumer.poll(timeout_s=5)
            consumer.commit(sync=False)  # no commit sent yet: it goes at once
            wait_for(lambda: committed(raw, "clerks") == {0: len(first)}, 5,
                     what="the first async commit")
            producer.send("ledger", 3, partition=0)
            producer.flush()
            more = consumer.poll(timeout_s=5)
            consumer.commit(sync=False)  # within the interval of the first: held back
            assert committed(raw, "clerks") == {0: len(first)}
            assert consumer.poll(timeout_s=0.5) == []  # 5 ms without events: it goes
            assert committed(raw, "clerks") == {0: len(first) + len(more)}
            producer.send("ledger", 4, partition=0)
            producer.flush()
            consumer.poll(timeout_s=5)
            consumer.commit(sync=False)
        finally:
            consumer.close()  # sends what is still held before leaving
        assert committed(raw, "clerks") == {0: 5}


def test_a_seek_drops_every_stream_reply_sent_before_it(broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="reel", partitions=1)
    with Consumer(broker.api, group="editors", topics=["reel"]) as consumer, \
            Producer(broker.api, linger_ms=0) as producer:
        assert consumer.poll(timeout_s=0.3) == []  # its streaming poll is parked now
        for i in range(5):  # one reply each, queued at the consumer: nobody polls
            producer.send("reel", i, partition=0)
            producer.flush()
        time.sleep(0.3)
        consumer.seek("reel", 0, 5)  # forward, past all five
        producer.send("reel", 5, partition=0)
        producer.flush()
        got: list[Event] = []
        wait_for(lambda: got.extend(consumer.poll(timeout_s=0.2)) or bool(got), 5,
                 what="the event after the seek")
        assert [e.value for e in got] == [5]


def test_a_consumer_rejoins_within_seconds_when_the_broker_restarts_under_it(
        tmp_path: Path) -> None:
    api_port, ingest_port = free_port(), free_port()
    broker = start_broker(tmp_path / "data", api_port=api_port, ingest_port=ingest_port)
    try:
        with Consumer(broker.api, group="g", topics=["t"], session_timeout_ms=3000,
                      timeout_s=30) as consumer:
            with Producer(broker.api) as producer:
                producer.send("t", "before", partition=0)
            assert [e.value for e in consumer.poll(timeout_s=5)] == ["before"]
            consumer.commit()
            broker.kill9()
            broker = start_broker(tmp_path / "data", api_port=api_port, ingest_port=ingest_port)
            restarted_at = time.monotonic()
            with Producer(broker.api) as producer:
                producer.send("t", "after", partition=0)
            got: list[Event] = []
            # Its parked poll died with the old broker: without the heartbeat's NOT_MEMBER
            # the consumer would wait out the poll and its 30 s timeout before joining again.
            while not got and time.monotonic() - restarted_at < 15:
                got = consumer.poll(timeout_s=1)
            assert [e.value for e in got] == ["after"]
    finally:
        broker.stop()


def test_requests_to_a_broker_long_gone_fail_within_a_bound_instead_of_blocking() -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: ZeroMQ queues until its limit
    conn = Connection(dead, timeout_s=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            for _ in range(5000):  # the send queue holds 1000
                conn.send(p.Ping())
        assert time.monotonic() - started < 5
    finally:
        conn.close()
    # The producer keeps retrying into that full queue, then gives up on its batches.
    producer = Producer(dead, linger_ms=0, request_timeout_s=0.01, delivery_timeout_s=1.5)
    try:
        producer._partitions["gone"] = 1  # no metadata request to a dead broker
        started = time.monotonic()
        for v in range(40):  # 16 in flight, resent every 10 ms: the queue fills in ~1 s
            producer.send("gone", v, partition=0)
        producer.flush(timeout_s=10)
        assert time.monotonic() - started < 20
        assert len(producer.errors) == 40
        assert {e.code for e in producer.errors} == {"UNAVAILABLE"}
    finally:
        producer.close(timeout_s=1)


def test_a_forgotten_reply_is_dropped_whether_it_came_before_or_after(
        broker: BrokerProcess) -> None:
    """``forget``: a request sent again elsewhere (the streams sender after a failover)
    leaves nothing behind, neither its reply nor, for an error, an async error."""
    conn = Connection(broker.api)
    try:
        early = conn.send(p.Ping())
        assert conn.arrived(early, 10)
        conn.forget(early)
        late = conn.send(p.Produce(topic="no such/topic", records=msgspec.Raw(
            msgspec.msgpack.encode([["x"]]))))  # answered with an error
        conn.forget(late)
        assert isinstance(conn.call(p.Ping()), p.PingReply)  # its reply came first
        assert not conn._stash and not conn._unwatched and not conn._forgotten
        assert conn.async_errors == []
    finally:
        conn.close()
