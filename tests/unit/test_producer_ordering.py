"""The producer sends a partition's batches in sequence order, whatever ZeroMQ's queue and
the broker do: a batch that could not be queued holds back the later ones of its partition,
an OUT_OF_ORDER_SEQUENCE resends the partition's batches at once, and no more requests are
in flight than the queues between producer and broker hold (issue 11).

The broker is a fake connection that checks sequences the way the broker does (docs/
protocol.md §8), so these run without processes."""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from brokerd import protocol as p
from runtime import producer as producer_module
from runtime.connection import BrokerError
from runtime.producer import MAX_REQUESTS, Producer

_encode = msgspec.msgpack.Encoder().encode


class FakeBroker:
    """Stands in for the producer's Connection: answers produce requests as the broker's
    idempotence check does.  Replies become visible when the producer waits for one."""

    endpoint = "tcp://fake"

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.sent: list[dict[str, Any]] = []
        self.stored: dict[tuple[str, int], list[Any]] = defaultdict(list)
        self.expected: dict[tuple[int, str, int], int] = {}
        self.pending: list[tuple[int, bytes]] = []  # answered, not yet readable
        self.replies: deque[tuple[int, bytes]] = deque()
        self.full = False  # ZeroMQ's send queue refuses every message
        self.lose = 0  # this many next requests are lost (a dropped connection)
        self.most_outstanding = 0
        self.superseded: set[int] = set()
        self.too_large: set[Any] = set()  # values refused with MESSAGE_TOO_LARGE

    # -- what the producer calls ------------------------------------------------------
    def next_id(self) -> int:
        return next(self._ids)

    def send_raw(self, body: bytes, block: bool = False) -> bool:
        if self.full:
            return False
        request = msgspec.msgpack.decode(body)
        parts = [request]
        if request["op"] == "produce_batches":  # as one produce per batch, in order
            parts = [{"op": "produce", "id": request["id"], "topic": topic,
                      "partition": partition, "sequence": sequence, "records": records,
                      "producer_id": request["producer_id"]}
                     for topic, partition, sequence, records in request["batches"]]
        self.sent.extend(parts)
        if self.lose:
            self.lose -= 1
            return True
        if request["op"] == "produce_batches":
            reply: Any = p.ProduceBatchesReply(id=request["id"], results=[
                self.result(self.answer(part)) for part in parts])
        else:
            reply = self.answer(request)
        self.pending.append((request["id"], _encode(reply)))
        self.most_outstanding = max(self.most_outstanding, len(self.pending) + len(self.replies))
        return True

    def readable(self) -> bool:
        return bool(self.replies)

    def recv_ready(self) -> tuple[int, bytes]:
        return self.replies.popleft()

    def recv(self, timeout_s: float | None) -> tuple[int, bytes] | None:
        self.replies.extend(self.pending)
        self.pending.clear()
        return self.replies.popleft() if self.replies else None

    def unwatched(self, request_id: int) -> None:
        self.superseded.add(request_id)

    def keep(self, request_id: int, body: bytes) -> None:
        assert request_id in self.superseded, f"a reply to {request_id} nobody asked for"

    def came_back(self) -> bool:
        return False

    def close(self) -> None:
        pass

    # -- the broker's side ------------------------------------------------------------
    def answer(self, request: dict[str, Any]) -> p.ProduceReply | p.ErrorReply:
        topic, partition, records = request["topic"], request["partition"], request["records"]
        if records[0][0] in self.too_large:
            return p.ErrorReply(id=request["id"], code="MESSAGE_TOO_LARGE", message="too large")
        key = (request["producer_id"], topic, partition)
        sequence, expected = request["sequence"], self.expected.get(key)
        if expected is not None and sequence > expected:
            return p.ErrorReply(id=request["id"], code="OUT_OF_ORDER_SEQUENCE",
                                message=f"sequence {sequence} arrived, {expected} expected")
        if expected is not None and sequence < expected:
            return p.ProduceReply(id=request["id"], topic=topic, offsets=[], duplicate=True)
        log = self.stored[(topic, partition)]
        base = len(log)
        log.extend(record[0] for record in records)
        self.expected[key] = sequence + len(records)
        return p.ProduceReply(id=request["id"], topic=topic,
                              offsets=[(partition, base, len(records))])

    @staticmethod
    def result(reply: p.ProduceReply | p.ErrorReply) -> p.BatchResult:
        if isinstance(reply, p.ErrorReply):
            return p.BatchResult(-1, 0, False, reply.code, reply.message)
        base = reply.offsets[0][1] if reply.offsets else -1
        return p.BatchResult(base, reply.offsets[0][2] if reply.offsets else 0, reply.duplicate)

    def sequences(self, partition: int) -> list[int]:
        return [r["sequence"] for r in self.sent if r["partition"] == partition]

    def release(self) -> None:
        self.replies.extend(self.pending)
        self.pending.clear()


@pytest.fixture
def fake() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def producer(fake: FakeBroker) -> Iterator[Producer]:
    """A producer (linger 0: every send ships at once) on the fake broker, its linger
    thread stopped so that only the test drives it."""
    producer = Producer("tcp://127.0.0.1:9", acks=1, linger_ms=0, request_timeout_s=60)
    with producer._lock:
        producer._closed = True
        producer._work.set()
    producer._linger.join(timeout=5)
    producer.conn.close()
    producer.conn = fake  # type: ignore[assignment]
    yield producer


def test_a_batch_that_could_not_be_queued_holds_back_the_later_ones_of_its_partition(
        producer: Producer, fake: FakeBroker) -> None:
    producer.send("t", 0, partition=0)
    producer.flush(timeout_s=5)
    producer.send("t", 1, partition=0)
    fake.full = True
    producer.send("t", 2, partition=0)  # not queued
    fake.full = False
    producer.send("t", 3, partition=0)  # must not overtake 2
    producer.send("t", 0, partition=1)  # another partition is not held back

    assert fake.sequences(0) == [0, 1]
    assert fake.sequences(1) == [0]

    producer.flush(timeout_s=5)

    assert fake.sequences(0) == [0, 1, 2, 3]
    assert fake.stored[("t", 0)] == [0, 1, 2, 3]
    assert not producer.errors


def test_a_held_partition_sends_only_what_could_not_be_queued(
        producer: Producer, fake: FakeBroker) -> None:
    producer.send("t", 0, partition=0)
    producer.flush(timeout_s=5)
    producer.send("t", 1, partition=0)  # queued, not yet answered
    fake.full = True
    producer.send("t", 2, partition=0)
    producer._retry_stale()  # still full
    fake.full = False
    producer._retry_stale()

    assert fake.sequences(0) == [0, 1, 2], "the queued batch went again"
    producer.flush(timeout_s=5)
    assert fake.stored[("t", 0)] == [0, 1, 2]


def test_the_first_batch_of_a_partition_goes_alone_until_it_is_acked(
        producer: Producer, fake: FakeBroker) -> None:
    for value in range(3):
        producer.send("t", value, partition=0)
    assert fake.sequences(0) == [0]

    fake.release()
    producer._collect()

    assert fake.sequences(0) == [0, 1, 2]


def test_a_lost_first_batch_is_stored_when_retried_not_taken_for_a_duplicate(
        producer: Producer, fake: FakeBroker) -> None:
    # The broker takes any sequence from a producer it does not know: had batch 1 gone out
    # behind a lost batch 0, it would be stored first and the retry of 0 answered as a
    # duplicate (acknowledged, never stored).
    fake.lose = 1
    for value in range(3):
        producer.send("t", value, partition=0)
    for request in producer._in_flight.values():
        for batch in request.batches:
            batch.sent_at -= producer.request_timeout_s + 1  # its request timeout passed
    producer.flush(timeout_s=5)

    assert fake.stored[("t", 0)] == [0, 1, 2]
    assert not producer.errors


def test_a_first_batch_that_failed_for_good_lets_the_next_ones_go(
        producer: Producer, fake: FakeBroker) -> None:
    fake.too_large = {0}
    for value in range(3):
        producer.send("t", value, partition=0)
    producer.flush(timeout_s=5)

    assert [e.code for e in producer.errors] == ["MESSAGE_TOO_LARGE"]
    assert fake.stored[("t", 0)] == [1, 2]


def test_an_out_of_order_sequence_resends_the_partitions_batches_in_order_at_once(
        producer: Producer, fake: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    producer.send("t", 0, partition=0)
    producer.flush(timeout_s=5)  # the broker knows the producer: it checks its sequences
    fake.lose = 1
    for value in range(1, 4):
        producer.send("t", value, partition=0)  # 1 is lost: 2 and 3 are out of order
    # Recovered from the replies alone: no wait for the request timeout, no look for stale
    # requests.
    monkeypatch.setattr(producer, "_retry_stale", lambda: pytest.fail("waited for a timeout"))
    while fake.pending or fake.replies:
        fake.release()
        producer._collect()

    assert fake.sequences(0) == [0, 1, 2, 3, 1, 2, 3]
    assert fake.stored[("t", 0)] == [0, 1, 2, 3]
    assert not producer._in_flight and not producer._unacked[("t", 0)]
    assert not producer.errors


def test_an_out_of_order_first_batch_goes_again_under_a_new_producer_id(
        producer: Producer, fake: FakeBroker) -> None:
    producer.send("t", 0, partition=0)
    producer.send("t", 1, partition=0)
    producer.flush(timeout_s=5)
    # The broker lost the acknowledged second batch (a crash before its fsync): resending
    # cannot fill that gap, starting a new sequence can.
    fake.expected[(producer.producer_id, "t", 0)] = 1
    fake.stored[("t", 0)].pop()

    producer.send("t", 2, partition=0)
    producer.flush(timeout_s=5)
    producer.send("t", 3, partition=0)
    producer.flush(timeout_s=5)

    again = [r for r in fake.sent if r["records"][0][0] in (2, 3)]
    assert [(r["producer_id"] == producer.producer_id, r["sequence"]) for r in again] == [
        (True, 2), (False, 0), (False, 1)]
    assert fake.stored[("t", 0)] == [0, 2, 3]
    assert not producer.errors


def test_no_more_requests_are_in_flight_than_zeromqs_queues_hold(
        producer: Producer, fake: FakeBroker) -> None:
    for partition in range(3 * MAX_REQUESTS):
        producer.send("t", partition, partition=partition)
    producer.flush(timeout_s=5)

    assert fake.most_outstanding == MAX_REQUESTS
    # With the superseded copies of resent requests: within the 1,000 messages a ZeroMQ
    # queue holds (SNDHWM, RCVHWM).
    assert 2 * MAX_REQUESTS <= 1000
    assert all(fake.stored[("t", n)] == [n] for n in range(3 * MAX_REQUESTS))
    assert not producer.errors


def test_a_partition_held_past_the_delivery_timeout_is_given_up(
        producer: Producer, fake: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    failed: list[str] = []
    fake.full = True
    producer.send("t", 0, partition=0,
                  callback=lambda partition, offset, error: failed.append(error.code if error else ""))
    now = producer_module.time.monotonic()
    monkeypatch.setattr(producer_module.time, "monotonic",
                        lambda: now + producer.delivery_timeout_s + 1)
    producer.flush(timeout_s=5)

    assert failed == ["UNAVAILABLE"]
    assert not producer._held


def test_a_batch_refused_for_good_does_not_get_the_next_ones_resent_forever(
        producer: Producer, fake: FakeBroker) -> None:
    producer.send("t", 0, partition=0)
    producer.flush(timeout_s=5)
    fake.too_large = {1}
    for value in range(1, 4):
        producer.send("t", value, partition=0)  # 2 and 3: out of order behind refused 1
    producer.flush(timeout_s=5)

    assert [e.code for e in producer.errors] == ["MESSAGE_TOO_LARGE"]
    assert fake.stored[("t", 0)] == [0, 2, 3]
    assert len(fake.sent) < 10, "resent again and again"


@pytest.fixture
def lingering(fake: FakeBroker) -> Iterator[Producer]:
    """A producer that ships only on flush (its linger thread stopped), on the fake broker."""
    producer = Producer("tcp://127.0.0.1:9", acks=1, request_timeout_s=60)
    with producer._lock:
        producer._closed = True
        producer._work.set()
    producer._linger.join(timeout=5)
    producer.linger_s = 60.0  # a send never ships: only _ship_all and flush do
    producer.conn.close()
    producer.conn = fake  # type: ignore[assignment]
    yield producer


def requests(fake: FakeBroker) -> int:
    return len({r["id"] for r in fake.sent})


def test_batches_ready_together_travel_in_one_request_each_acked_on_its_own(
        lingering: Producer, fake: FakeBroker) -> None:
    acked: dict[int, list[tuple[int, BaseException | None]]] = defaultdict(list)
    fake.too_large = {"bad"}
    for partition in range(300):
        lingering.send("t", "bad" if partition == 7 else partition, partition=partition,
                       callback=lambda part, offset, error: acked[part].append((offset, error)))
    lingering._ship_all(list(lingering._buffers))
    assert requests(fake) == 1, "300 ready batches went as one produce_batches"
    lingering.flush(timeout_s=5)

    assert set(acked) == set(range(300))
    assert [e for _, e in acked[7]][0].code == "MESSAGE_TOO_LARGE"
    assert all(acked[i] == [(0, None)] for i in range(300) if i != 7)
    for partition in range(300):
        lingering.send("t", f"again-{partition}", partition=partition)
    lingering.flush(timeout_s=5)
    assert requests(fake) == 2
    assert fake.stored[("t", 3)] == [3, "again-3"] and fake.stored[("t", 7)] == ["again-7"]
    assert [e.code for e in lingering.errors] == ["MESSAGE_TOO_LARGE"]


def test_an_out_of_order_batch_in_a_shared_request_resends_only_its_partition(
        lingering: Producer, fake: FakeBroker) -> None:
    for partition in range(50):
        lingering.send("t", 0, partition=partition)
    lingering.flush(timeout_s=5)
    # The broker forgets partition 9's producer state (as after losing unsynced batches):
    # the next batch of 9 is out of order, the 49 others are stored.
    fake.expected[(lingering.producer_id, "t", 9)] = 0
    fake.stored[("t", 9)].clear()
    for partition in range(50):
        lingering.send("t", 1, partition=partition)
    lingering.flush(timeout_s=5)

    assert all(fake.stored[("t", i)] == [0, 1] for i in range(50) if i != 9)
    assert fake.stored[("t", 9)] == [1], "renumbered under a new producer id and stored"
    again = [r for r in fake.sent if r["partition"] != 9 and r["sequence"] == 1]
    assert len(again) == 49, "the other partitions' batches were not sent twice"
    assert not lingering.errors


def test_a_batch_waiting_for_a_leader_before_its_first_send_is_not_given_up_at_once(
        producer: Producer) -> None:
    """In a cluster a partition whose leader is not known yet waits for metadata; its batch
    was never sent, and the delivery timeout runs from the send() call, not from 0."""
    failed: list[BrokerError] = []
    with producer._lock:
        producer._cl.clustered = True
        producer._cl.moved.add(("t", 0))
        producer._cl.refresh_at = float("inf")  # no metadata request in this test
        producer._cl.conns = {}  # the fixture closed the real one
    producer.send("t", 0, partition=0,
                  callback=lambda partition, offset, error: error and failed.append(error))
    with producer._lock:
        producer._retry_stale()
    assert not failed and producer._unacked[("t", 0)]
