"""Hostile input: the broker answers every bad frame with a clear error and keeps serving."""

from __future__ import annotations

import threading
import typing
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from brokerd import protocol as p
from runtime.client import BrokerError, Consumer, Producer
from tests.helpers import BrokerProcess, wait_for
from tests.integration.wire import RawClient, assert_clear_error, read_partition

EXAMPLES = 10_000
GOOD_TOPIC, GOOD_GROUP = "good-events", "good-group"
_encode = msgspec.msgpack.encode

# -- strategies (kept flat: the machine is shared and hypothesis pays per draw) ---------
FIELDS = sorted({name for t in typing.get_args(p.Request) for name in t.__struct_fields__}
                - {"op"})
NAMES = st.sampled_from(["fuzz", "fuzz-2", "fuzz.group", "../etc", "..", ".", "", "a/b",
                         "/tmp/x", "x" * 250, "nul\x00", "é", " "])
INTS = st.one_of(st.integers(-2**63, 2**64 - 1),
                 st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63 - 1, 2**64 - 1, -2**63,
                                  65535, 65536, 60_001, 16 * 1024 * 1024 + 1]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=8),
                    st.binary(max_size=8), NAMES)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.text(max_size=4), SCALARS, max_size=2))
RECORDS = st.one_of(VALUES, st.lists(st.lists(VALUES, max_size=4), max_size=3))
OPS = st.one_of(st.sampled_from(p.OPS), st.sampled_from(p.OPS).map(str.upper),
                st.text(max_size=12), INTS, st.none(), st.binary(max_size=4))


def request(op: Any, request_id: int, fields: list[tuple[str, Any]]) -> dict[str, Any]:
    return harmless({"op": op, "id": request_id, **dict(fields)})


REQUESTS = st.builds(request, OPS, INTS, st.lists(st.tuples(
    st.sampled_from(FIELDS), st.one_of(VALUES, NAMES, RECORDS)), max_size=5))
PRODUCES = st.builds(request, st.just("produce"), INTS, st.lists(st.one_of(
    st.tuples(st.just("topic"), NAMES), st.tuples(st.just("records"), RECORDS),
    st.tuples(st.sampled_from(["partition", "acks", "producer_id", "sequence"]), VALUES)),
    max_size=4))


def harmless(request: dict[str, Any]) -> dict[str, Any]:
    """Keep a request that happens to be valid from parking, staying silent or being slow."""
    if isinstance(request.get("max_wait_ms"), int):
        request["max_wait_ms"] = 0  # a valid long poll would hold its reply back
    if request.get("acks") == 0:
        request["acks"] = 1  # a valid acks=0 produce is answered by silence
    if isinstance(request.get("partitions"), int) and request["partitions"] > 4:
        request["partitions"] = 4  # a thousand partitions is slow, not bad
    return request


def deep(n: int, inner: bytes = b"\xc0") -> bytes:
    return b"\x91" * n + inner


def truncated(body: bytes, fraction: float) -> bytes:
    return body[:int(len(body) * fraction)]


SINGLE_BODIES = st.one_of(
    st.binary(max_size=300),
    VALUES.map(_encode),
    REQUESTS.map(_encode),
    PRODUCES.map(_encode),
    st.builds(truncated, REQUESTS.map(_encode), st.floats(0, 0.99)),
    st.integers(10, 20_000).map(deep),
    st.integers(10, 20_000).map(lambda n: _encode(
        {"op": "produce", "id": 5, "topic": "fuzz", "records": msgspec.Raw(deep(n))})),
    st.sampled_from([
        b"\xdb\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff\xc0", b"\xdf\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xffab", b"\xcf" + b"\xff" * 8, b"\xd3\x80" + b"\x00" * 7,
        b"\x81\xa2op\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", b"\xc1", b"\x81\xc0\xc0", b"",
    ]),
)
MESSAGES = st.one_of(
    SINGLE_BODIES.map(lambda body: [body]),
    st.lists(st.one_of(st.binary(max_size=40), st.just(b""), st.just(_encode({"op": "ping"}))),
             min_size=2, max_size=5),
    SINGLE_BODIES.map(lambda body: [b"", body]),
)
PER_EXAMPLE = 4  # messages per hypothesis example: the engine's overhead is per example


# -- a well-behaved client running alongside ------------------------------------------
class GoodTraffic(threading.Thread):
    """A Producer and a Consumer doing honest work while the fuzzing goes on."""

    def __init__(self, api: str) -> None:
        super().__init__(daemon=True, name="good-traffic")
        self.api = api
        self.stop = threading.Event()
        self.sent = 0
        self.received: list[int] = []
        self.errors: list[Any] = []

    def on_ack(self, partition: int, offset: int, error: BrokerError | None) -> None:
        if error is not None:
            self.errors.append(error)

    def run(self) -> None:
        try:
            with Producer(self.api, linger_ms=2) as producer, \
                    Consumer(self.api, group=GOOD_GROUP, topics=[GOOD_TOPIC]) as consumer:
                while not self.stop.is_set():
                    for _ in range(20):
                        producer.send(GOOD_TOPIC, self.sent, key=str(self.sent % 7),
                                      callback=self.on_ack)
                        self.sent += 1
                    producer.flush(timeout_s=30)
                    self.received.extend(e.value for e in consumer.poll(timeout_s=0.05))
                    consumer.commit()
                def caught_up() -> bool:
                    self.received.extend(e.value for e in consumer.poll(timeout_s=0.2))
                    return len(self.received) >= self.sent
                wait_for(caught_up, 30, what="the good events")
                self.errors.extend(producer.errors + consumer.conn.async_errors)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)


def test_ten_thousand_malformed_frames_get_clear_errors_while_good_clients_lose_nothing(
        broker: BrokerProcess) -> None:
    raw = RawClient(broker.api)
    raw.ok("create_topic", topic=GOOD_TOPIC, partitions=3)
    good = GoodTraffic(broker.api)
    good.start()
    codes: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES // PER_EXAMPLE, deadline=None, database=None,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(messages=st.lists(MESSAGES, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def answer_clearly(messages: list[list[bytes]]) -> None:
        for frames in messages:
            raw.send_frames(frames)
            reply = raw.recv_reply(timeout_s=10)
            assert reply is not None, f"no reply to {frames!r:.300}"
            if reply.get("op") == "error":
                assert_clear_error(reply)
                assert reply["code"] != "INTERNAL", f"{frames!r:.300} hit a bug: {reply}"
                codes[reply["code"]] += 1
            else:
                assert reply.get("op") in p.OPS, f"odd reply {reply!r:.300}"
                codes["ok"] += 1
            assert raw.socket.poll(0) == 0, f"two replies to {frames!r:.300}"

    try:
        answer_clearly()
    finally:
        good.stop.set()
        good.join(60)
        raw.close()
    assert broker.proc.poll() is None, "the broker died"
    assert sum(codes.values()) >= EXAMPLES
    assert codes["BAD_REQUEST"] > EXAMPLES // 2 and codes["UNKNOWN_OP"] > 0, codes
    assert not good.is_alive() and not good.errors, good.errors[:3]
    assert good.sent > 0 and sorted(good.received) == list(range(good.sent)), \
        "the good consumer lost or repeated events"
    with RawClient(broker.api) as check:
        assert check.ok("ping")["version"] == p.PROTOCOL_VERSION
    assert "Traceback" not in broker.log()


def test_requests_over_the_size_limits_are_refused_and_the_broker_keeps_serving(
        broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw:
        big = _encode({"op": "produce", "id": 41, "topic": "big",
                       "records": [[b"x" * (17 * 1024 * 1024)]]})
        raw.send_frames([big])
        reply = raw.recv_reply(timeout_s=20)
        assert reply is not None
        assert_clear_error(reply)
        assert (reply["code"], reply["id"]) == ("MESSAGE_TOO_LARGE", 41)

        raw.send_frames([b"\xff" * (16 * 1024 * 1024 + 1)])
        reply = raw.recv_reply(timeout_s=20)
        assert reply is not None and reply["code"] == "MESSAGE_TOO_LARGE"

        # Past max_frame_bytes ZeroMQ itself drops the connection: no reply, no harm.
        raw.send_frames([b"\x00" * (p.MAX_FRAME_BYTES + 1)])
        assert raw.recv_reply(timeout_s=1.0) is None
    with RawClient(broker.api) as fresh:
        assert fresh.ok("ping")["op"] == "ping"
        assert fresh.error_code("metadata", topics=["big"]) == "UNKNOWN_TOPIC"
    assert broker.proc.poll() is None


BAD_NAMES = ["..", ".", "a/b", "x" * 250, "", "nul\x00", "sp ace", "é", "..\\..\\x"]


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")
            if not path.name.endswith(".log") or "topics" in path.parts}


def test_invalid_topic_names_are_refused_and_never_become_paths(
        broker: BrokerProcess, tmp_path: Path) -> None:
    escape = f"escape-{uuid.uuid4().hex[:8]}"
    names = [f"../{escape}", f"../../{escape}", f"/tmp/{escape}", *BAD_NAMES]
    before = tree(tmp_path)
    with RawClient(broker.api) as raw:
        for name in names:
            requests: list[tuple[str, dict[str, Any]]] = [
                ("produce", {"topic": name, "records": [["v"]]}),
                ("produce", {"topic": name, "partition": 0, "records": [["v"]]}),
                ("create_topic", {"topic": name}),
                ("fetch", {"topic": name, "partition": 0, "offset": 0}),
                ("list_offsets", {"topic": name, "partition": 0, "timestamp": -1}),
                ("metadata", {"topics": [name]}),
                ("delete_topic", {"topic": name}),
                ("join", {"group": "g", "topics": [name]}),
            ]
            for op, fields in requests:
                code = raw.error_code(op, **fields)
                assert code in ("INVALID_TOPIC", "BAD_REQUEST"), f"{op} {name!r}: {code}"
                if len(name) <= 249 and name:
                    assert code == "INVALID_TOPIC", f"{op} {name!r}: {code}"
        push = raw.context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(broker.ingest)
        for name in names:
            push.send_multipart([name.encode(), b"value"])
        push.close()
        wait_for(lambda: raw.ok("stats")["stats"]["counts"].get("ingest_invalid") == len(names),
                 10, what="every bad ingest counted")
        assert raw.ok("metadata")["topics"] == []

    assert tree(tmp_path) == before, "something was created or removed"
    assert list((broker.data_dir / "topics").iterdir()) == []
    for root in (tmp_path, tmp_path.parent, tmp_path.parent.parent, Path("/tmp")):
        assert not list(root.glob(f"*{escape}*")), f"a topic escaped into {root}"


@pytest.mark.parametrize("op, fields", [
    ("fetch", {"topic": "t", "partition": 0, "offset": -1}),
    ("fetch", {"topic": "t", "partition": -1, "offset": 0}),
    ("commit", {"group": "g", "offsets": [["t", 0, -5]]}),
    ("seek", {"group": "g", "member_id": "m", "topic": "t", "partition": 0, "offset": -1}),
    ("list_offsets", {"topic": "t", "partition": 0, "timestamp": -3}),
    ("produce", {"topic": "t", "partition": 0, "records": [["v", None, None, -1]]}),
])
def test_a_negative_offset_or_partition_is_a_bad_request(
        broker: BrokerProcess, op: str, fields: dict[str, Any]) -> None:
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="t", partitions=1)
        raw.ok("produce", topic="t", partition=0, records=[["v"]])
        assert raw.error_code(op, **fields) == "BAD_REQUEST"
        assert raw.ok("list_offsets", topic="t", partition=0, timestamp=-1)["offset"] == 1


def test_bad_ingest_frames_are_counted_and_good_ones_still_arrive(
        broker: BrokerProcess) -> None:
    bad = [[b"only-a-topic"], [b"t", b"k", b"v", b"extra"], [b"\xff\xfe", b"v"], [b"", b"v"],
           [b"../x", b"v"], [b"a" * 300, b"v"], [b"t"] * 7]
    good = [[b"arrivals", b"first"], [b"arrivals", b"table-4", b"second"]]
    with RawClient(broker.api) as raw:
        push = raw.context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(broker.ingest)
        for frames in [good[0], *bad, good[1]]:
            push.send_multipart(frames)
        push.close()
        wait_for(lambda: raw.ok("stats")["stats"]["counts"].get("ingest_invalid") == len(bad),
                 10, what="the bad ingest frames to be counted")

        def both_arrived() -> list[Any] | None:
            if raw.call("metadata", topics=["arrivals"])["op"] == "error":
                return None
            records = [r for _, r in read_partition(raw, "arrivals", 0)]
            return records if len(records) == 2 else None
        records = wait_for(both_arrived, 10, what="the good frames")
        assert records is not None
        stats = raw.ok("stats")["stats"]

    assert [(r[0], r[1]) for r in records] == [(b"first", None), (b"second", b"table-4")]
    assert stats["counts"]["ingest_invalid"] == len(bad)
    assert stats["counts"].get("ingest_records") == 2
    assert "ingest: dropped a message" in broker.log()
    assert broker.proc.poll() is None
