"""``produce_batches``: one request appends one batch to each of many partitions, each batch
stored, refused or recognised as a duplicate on its own, as a ``produce`` naming its
partition would be."""

from __future__ import annotations

import contextlib
import threading

import msgspec

from runtime.client import BrokerError, Producer
from tests.helpers import BrokerProcess, free_port, start_broker, wait_for
from tests.integration.wire import RawClient, read_partition

PID = 77


def records(*values: str) -> msgspec.Raw:
    return msgspec.Raw(msgspec.msgpack.encode([[v] for v in values]))


def stored(client: RawClient, topic: str, partition: int) -> list[str]:
    return [record[0] for _, record in read_partition(client, topic, partition)]


def test_each_batch_is_stored_refused_or_recognised_on_its_own(broker: BrokerProcess) -> None:
    with RawClient(broker.api) as client:
        client.ok("create_topic", topic="a", partitions=3)
        client.ok("create_topic", topic="b", partitions=1)
        reply = client.ok("produce_batches", producer_id=PID, acks=1, batches=[
            ["a", 0, 0, records("a0", "a1")],
            ["a", 2, 0, records("a2")],
            ["b", 0, 0, records("b0", "b1", "b2")],
            ["nope", 0, 0, records("x")],            # unknown topic: no auto-create
            ["a", 9, 0, records("x")],               # no such partition
            ["a", 1, 5, records("x")],               # a new producer starts at sequence 0
            ["b", 0, 0, msgspec.Raw(msgspec.msgpack.encode([1, 2]))],  # not records
        ])
        assert reply["results"][:3] == [[0, 2, False, "", ""], [0, 1, False, "", ""],
                                         [0, 3, False, "", ""]]
        codes = [r[3] for r in reply["results"][3:]]
        assert codes == ["UNKNOWN_TOPIC", "UNKNOWN_PARTITION", "OUT_OF_ORDER_SEQUENCE",
                         "BAD_REQUEST"]
        assert all(r[0] == -1 and r[4] for r in reply["results"][3:]), reply

        # The same request again (a retry): every stored batch is a duplicate, stored once;
        # with a new batch behind one of them, only that one is appended.
        again = client.ok("produce_batches", producer_id=PID, acks="all", batches=[
            ["a", 0, 0, records("a0", "a1")],
            ["a", 0, 2, records("a3")],
            ["b", 0, 0, records("b0", "b1", "b2")],
        ])
        assert again["results"] == [[0, 2, True, "", ""], [2, 1, False, "", ""],
                                    [0, 3, True, "", ""]]
        assert stored(client, "a", 0) == ["a0", "a1", "a3"]
        assert stored(client, "a", 1) == []
        assert stored(client, "a", 2) == ["a2"]
        assert stored(client, "b", 0) == ["b0", "b1", "b2"]

        # Requests that are wrong as a whole get one error and store nothing.
        assert client.error_code("produce_batches", producer_id=PID, batches=[]) == "BAD_REQUEST"
        assert client.error_code("produce_batches", producer_id=PID,
                                 batches=[["a", 0, -1, records("x")]]) == "BAD_REQUEST"
        assert client.ok("ping")
        assert stored(client, "a", 0) == ["a0", "a1", "a3"]


def test_an_fsync_always_topic_answers_after_the_fsync_and_keeps_the_batches(tmp_path) -> None:
    broker = start_broker(tmp_path / "data")
    try:
        with RawClient(broker.api) as client:
            client.ok("create_topic", topic="d", partitions=4, config={"fsync": "always"})
            batches = [["d", i, -1, records(f"v{i}")] for i in range(4)]
            reply = client.ok("produce_batches", acks=1, batches=batches)
            assert [r[:2] for r in reply["results"]] == [[0, 1]] * 4
        broker.kill9()
        broker = start_broker(tmp_path / "data", api_port=int(broker.api.rsplit(":", 1)[1]))
        with RawClient(broker.api) as client:
            assert [stored(client, "d", i) for i in range(4)] == [[f"v{i}"] for i in range(4)]
    finally:
        broker.stop()


def test_keyed_sends_over_many_partitions_survive_a_kill_9_once_each(tmp_path) -> None:
    """The producer's shared requests (produce_batches) after a kill -9 of the broker: every
    event is stored exactly once, in each partition in the order it was sent."""
    data = tmp_path / "data"
    api_port, ingest_port = free_port(), free_port()
    broker = start_broker(data, api_port=api_port, ingest_port=ingest_port)
    producer = Producer(broker.api, request_timeout_s=60)
    sent = 0
    stop = threading.Event()

    def send_steadily() -> None:
        nonlocal sent
        while not stop.is_set():
            producer.send("wide", sent, key=f"key-{sent % 997}")
            sent += 1

    sender = threading.Thread(target=send_steadily, daemon=True)
    try:
        with RawClient(broker.api) as raw:
            raw.ok("create_topic", topic="wide", partitions=300)
        sender.start()
        wait_for(lambda: sent >= 20_000, 60, what="20,000 sends")
        broker.kill9()
        broker = start_broker(data, api_port=api_port, ingest_port=ingest_port)
        wait_for(lambda: sent >= 40_000 or not sender.is_alive(), 60, what="sends after the restart")
        stop.set()
        sender.join(timeout=30)
        producer.flush(timeout_s=60)
        assert not producer.errors
        values: list[int] = []
        with RawClient(broker.api) as raw:
            for partition in range(300):
                stored_here = [record[0] for _, record in read_partition(raw, "wide", partition)]
                assert stored_here == sorted(stored_here), f"partition {partition} out of order"
                values.extend(stored_here)
        assert sorted(values) == list(range(sent)), "an event lost or stored twice"
        # A batch per request would carry a few events (300 partitions, 5 ms of sends).
        ratio = events_per_request(broker)
        assert ratio >= 20, f"the batches did not share requests ({ratio:.1f} events a request)"
    finally:
        stop.set()
        with contextlib.suppress(BrokerError):
            producer.close(timeout_s=1)
        broker.stop()


def events_per_request(broker: BrokerProcess) -> float:
    """Over the broker's life, records appended per request it was sent."""
    with RawClient(broker.api) as raw:
        stats = raw.ok("stats")["stats"]
    return stats["totals"]["records_in"] / max(1, stats["counts"]["requests"])
