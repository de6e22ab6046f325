"""The wire protocol as docs/protocol.md states it, spoken by hand: pyzmq and msgpack only.

Nothing from ``brokerd`` or ``runtime`` is imported here on purpose: if a client written from
the document alone works against a real broker, so does this file.
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from brokerd import protocol as p
from tests.helpers import BrokerProcess, wait_for

TIMEOUT_S = 10.0


class RawClient:
    """One DEALER connection: a request is a msgpack map with ``op`` and ``id``."""

    def __init__(self, endpoint: str, context: zmq.Context) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self._ids = itertools.count(1)
        self._stash: dict[int, dict[str, Any]] = {}

    def send(self, op: str, **fields: Any) -> int:
        request_id = next(self._ids)
        self.socket.send(msgpack.packb({"op": op, "id": request_id, **fields}))
        return request_id

    def recv(self, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        assert self.socket.poll(int(timeout_s * 1000)), "no reply from the broker in time"
        frames = self.socket.recv_multipart()
        assert len(frames) == 1, "a DEALER request is answered with exactly one body frame"
        return unpack(frames[0])

    def wait(self, request_id: int, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        """The reply carrying ``request_id``; replies to other ids are kept for later."""
        deadline = time.monotonic() + timeout_s
        while request_id not in self._stash:
            reply = self.recv(max(0.0, deadline - time.monotonic()))
            self._stash[reply.get("id", 0)] = reply
        return self._stash.pop(request_id)

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.wait(self.send(op, **fields))

    def ok(self, op: str, **fields: Any) -> dict[str, Any]:
        reply = self.call(op, **fields)
        assert reply["op"] == op, reply
        return reply

    def close(self) -> None:
        self.socket.close(linger=0)


def unpack(body: bytes) -> dict[str, Any]:
    reply = msgpack.unpackb(body, raw=False)
    assert isinstance(reply, dict) and "op" in reply, reply
    return reply


def key_bytes(key: Any) -> bytes:
    """What a key hashes by (docs/protocol.md, "Partitioning"): UTF-8, the bytes, or msgpack."""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    return msgpack.packb(key)


def partition_for(key: Any, partitions: int) -> int:
    return zlib.crc32(key_bytes(key)) % partitions


def records_of(batches: list[list[Any]], start: int) -> list[tuple[int, list[Any]]]:
    """(offset, record) pairs of a fetch or poll, skipping records below ``start``."""
    out = []
    for base_offset, _append_ts, records in batches:
        for i, record in enumerate(records):
            if base_offset + i >= start:
                out.append((base_offset + i, record))
    return out


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
def client(broker: BrokerProcess, context: zmq.Context) -> Iterator[RawClient]:
    c = RawClient(broker.api, context)
    yield c
    c.close()


# -- the byte-level example of docs/protocol.md ----------------------------------------------
DOC_CREATE = bytes.fromhex(
    "84a26f70ac6372656174655f746f706963a2696401a5746f706963a66f7264657273"
    "aa706172746974696f6e7303")
DOC_PRODUCE = bytes.fromhex(
    "84a26f70a770726f64756365a2696407a5746f706963a66f7264657273a77265636f726473"
    "929481a570697a7a6102a77461626c652d3781a6736f75726365a3776562cf0000018bcfe56800"
    "91a66e6f206b6579")
DOC_CREATE_REPLY = bytes.fromhex(
    "85a26f70ac6372656174655f746f706963a5746f706963a66f7264657273"
    "aa706172746974696f6e7303a763726561746564c3a2696401")
DOC_PRODUCE_REPLY = bytes.fromhex(
    "85a26f70a770726f64756365a5746f706963a66f7264657273a76f666673657473"
    "929302000193000001a96475706c6963617465c2a2696407")
DOC_RECORD_1 = bytes.fromhex(  # record 1 of DOC_PRODUCE, stored and fetched unchanged
    "9481a570697a7a6102a77461626c652d3781a6736f75726365a3776562cf0000018bcfe56800")


def test_the_byte_level_example_of_the_document_is_exact(broker: BrokerProcess,
                                                         context: zmq.Context) -> None:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(broker.api)
    try:
        sock.send(DOC_CREATE)
        assert sock.poll(10_000)
        assert sock.recv() == DOC_CREATE_REPLY
        sock.send(DOC_PRODUCE)
        assert sock.poll(10_000)
        assert sock.recv() == DOC_PRODUCE_REPLY
        sock.send(msgpack.packb({"op": "fetch", "id": 8, "topic": "orders", "partition": 2,
                                 "offset": 0}))
        assert sock.poll(10_000)
        body = sock.recv()
        # batches -> one batch [0, append_ts (uint64), records]; records = 91 + record 1 as sent
        assert bytes.fromhex("a762617463686573" "91" "93" "00" "cf") in body
        assert b"\x91" + DOC_RECORD_1 + bytes.fromhex("a2696408") in body
        assert unpack(body)["batches"][0][2] == [
            [{"pizza": 2}, "table-7", {"source": "web"}, 1_700_000_000_000]]
    finally:
        sock.close(linger=0)


# -- frames ----------------------------------------------------------------------------------
def test_dealer_and_req_clients_get_replies_in_their_own_shape(broker: BrokerProcess,
                                                               context: zmq.Context,
                                                               client: RawClient) -> None:
    ping = client.ok("ping")
    assert set(ping) == {"op", "id", "version", "time_ms"}  # every field, always
    assert ping["version"] == p.PROTOCOL_VERSION and ping["time_ms"] > 1_600_000_000_000

    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(broker.api)
    try:
        req.send(msgpack.packb({"op": "ping", "id": 41}))
        assert req.poll(10_000)
        assert unpack(req.recv())["id"] == 41
    finally:
        req.close(linger=0)

    # A DEALER may also speak REQ's shape: an empty delimiter frame, then the body.
    client.socket.send_multipart([b"", msgpack.packb({"op": "ping", "id": 42})])
    assert client.socket.poll(10_000)
    delimiter, body = client.socket.recv_multipart()
    assert delimiter == b"" and unpack(body)["id"] == 42


def test_pipelined_requests_are_answered_by_id(client: RawClient) -> None:
    client.ok("create_topic", topic="pipe", partitions=2)
    sent = [client.send("ping") for _ in range(10)]
    sent += [client.send("produce", topic="pipe", partition=i % 2, records=[[i]])
             for i in range(10)]
    replies = {request_id: client.wait(request_id) for request_id in reversed(sent)}
    assert all(replies[i]["op"] == "ping" for i in sent[:10])
    assert all(replies[i]["op"] == "produce" for i in sent[10:])


# -- produce, fetch, records and batches -----------------------------------------------------
def test_produce_stores_keys_headers_and_timestamps_and_fetch_returns_batches(
        client: RawClient) -> None:
    client.ok("create_topic", topic="orders", partitions=3)
    assert partition_for("table-7", 3) == 2
    reply = client.ok("produce", topic="orders", records=[
        [{"pizza": 2}, "table-7", {"source": "web", "raw": b"\x01"}, 1_700_000_000_000],
        ["dessert", "table-7"],
        [b"\xff\x00 raw value", "table-7", None, 1_700_000_000_500],
    ])
    assert reply == {"op": "produce", "id": reply["id"], "topic": "orders",
                     "offsets": [[2, 0, 3]], "duplicate": False}

    fetched = client.ok("fetch", topic="orders", partition=2, offset=0)
    assert (fetched["start_offset"], fetched["end_offset"], fetched["offset"]) == (0, 3, 0)
    [[base_offset, append_ts, records]] = fetched["batches"]
    assert base_offset == 0 and append_ts > 1_700_000_000_500
    assert records == [  # each record exactly as sent: nothing padded or re-encoded
        [{"pizza": 2}, "table-7", {"source": "web", "raw": b"\x01"}, 1_700_000_000_000],
        ["dessert", "table-7"],  # no timestamp: the batch's append_timestamp
        [b"\xff\x00 raw value", "table-7", None, 1_700_000_000_500],
    ]

    # An offset inside a batch returns the whole batch: the client skips what is below.
    middle = client.ok("fetch", topic="orders", partition=2, offset=1)
    assert middle["batches"][0][0] == 0
    assert [offset for offset, _ in records_of(middle["batches"], 1)] == [1, 2]
    at_end = client.ok("fetch", topic="orders", partition=2, offset=3)
    assert at_end["batches"] == []


def test_the_key_hash_computed_by_hand_is_the_partition_the_broker_chooses(
        client: RawClient) -> None:
    client.ok("create_topic", topic="hashed", partitions=3)
    keys: list[Any] = ["table-7", "order-2", "user-42", "café", b"raw-key", b"\x00\x01", 1, 7]
    chosen = {}
    for key in keys:
        reply = client.ok("produce", topic="hashed", records=[["v", key]])
        [[partition, _base, count]] = reply["offsets"]
        assert count == 1
        chosen[repr(key)] = partition
    assert chosen == {repr(k): partition_for(k, 3) for k in keys}
    assert set(chosen.values()) == {0, 1, 2}


def test_keyless_records_of_one_request_stay_together_and_requests_rotate(
        client: RawClient) -> None:
    client.ok("create_topic", topic="spread", partitions=3)
    used = []
    for i in range(3):
        reply = client.ok("produce", topic="spread", records=[[i], [i + 10], [i + 20]])
        [[partition, base, count]] = reply["offsets"]
        assert count == 3
        used.append(partition)
    assert sorted(used) == [0, 1, 2]


def test_a_mixed_request_reports_one_offsets_entry_per_partition(client: RawClient) -> None:
    client.ok("create_topic", topic="mixed", partitions=3)
    reply = client.ok("produce", topic="mixed",
                      records=[["a", "table-7"], ["b", "user-42"], ["c", "table-7"]])
    assert sorted(reply["offsets"]) == [[1, 0, 1], [2, 0, 2]]


def str8(text: bytes) -> bytes:
    """A str in the str8 encoding (d9 len ...), which msgpack.packb uses only from 32 bytes."""
    return b"\xd9" + bytes([len(text)]) + text


def test_a_split_produce_stores_each_records_bytes_as_the_producer_encoded_them(
        client: RawClient) -> None:
    client.ok("create_topic", topic="asis", partitions=3)
    first = b"\x95" + str8(b"first") + str8(b"table-7") + b"\xc0\xc0\x2a"  # 5 elements
    user = b"\x92" + b"\xcd\x00\x05" + str8(b"user-42")  # value 5 as uint16
    keyless = b"\x91" + b"\xa4last"
    second = b"\x92" + str8(b"second") + b"\xa7table-7"  # the same key as fixstr
    body = (b"\x84" + msgpack.packb("op") + msgpack.packb("produce")
            + msgpack.packb("id") + msgpack.packb(77)
            + msgpack.packb("topic") + msgpack.packb("asis")
            + msgpack.packb("records") + b"\x94" + first + user + keyless + second)
    client.socket.send(body)
    reply = client.wait(77)
    # The first keyless request of the topic goes to partition 0 (docs, "Partitioning").
    assert reply["offsets"] == [[2, 0, 2], [1, 0, 1], [0, 0, 1]]
    expected = {2: b"\x92" + first + second, 1: b"\x91" + user, 0: b"\x91" + keyless}
    for partition, records_bytes in expected.items():
        client.socket.send(msgpack.packb({"op": "fetch", "id": 100 + partition, "topic": "asis",
                                          "partition": partition, "offset": 0}))
        assert client.socket.poll(10_000)
        fetched = client.socket.recv()
        assert records_bytes in fetched, partition
    got = client.ok("fetch", topic="asis", partition=2, offset=0)["batches"][0][2]
    assert got == [["first", "table-7", None, None, 42], ["second", "table-7"]]


def test_acks_zero_gets_no_reply_and_acks_all_gets_one(client: RawClient) -> None:
    client.ok("create_topic", topic="acks", partitions=1, config={"fsync": "never"})
    client.send("produce", topic="acks", records=[["fire"]], acks=0)
    durable = client.ok("produce", topic="acks", records=[["durable"]], acks="all")
    assert durable["offsets"] == [[0, 1, 1]] and durable["duplicate"] is False
    assert not client.socket.poll(200), "acks=0 must not be answered"


def test_an_idempotent_retry_gets_the_original_offsets(client: RawClient) -> None:
    client.ok("create_topic", topic="idem", partitions=2, config={"fsync": "never"})
    first = client.ok("produce", topic="idem", partition=1, producer_id=77, sequence=0,
                      records=[["a"], ["b"]])
    assert first["offsets"] == [[1, 0, 2]] and first["duplicate"] is False
    again = client.ok("produce", topic="idem", partition=1, producer_id=77, sequence=0,
                      records=[["a"], ["b"]])
    assert again["offsets"] == [[1, 0, 2]] and again["duplicate"] is True
    # acks "all": answered (after the fsync that covers the original append), still a duplicate
    durable = client.ok("produce", topic="idem", partition=1, producer_id=77, sequence=0,
                        records=[["a"], ["b"]], acks="all")
    assert durable["offsets"] == [[1, 0, 2]] and durable["duplicate"] is True
    gap = client.call("produce", topic="idem", partition=1, producer_id=77, sequence=5,
                      records=[["z"]])
    assert gap["code"] == "OUT_OF_ORDER_SEQUENCE"
    nxt = client.ok("produce", topic="idem", partition=1, producer_id=77, sequence=2,
                    records=[["c"]])
    assert nxt["offsets"] == [[1, 2, 1]]
    unnamed = client.call("produce", topic="idem", producer_id=77, sequence=3, records=[["d"]])
    assert unnamed["code"] == "BAD_REQUEST"
    unnumbered = client.call("produce", topic="idem", partition=1, producer_id=77,
                             records=[["d"]])  # sequence left out: -1
    assert unnumbered["code"] == "BAD_REQUEST"
    assert client.ok("fetch", topic="idem", partition=1, offset=0)["end_offset"] == 3


def test_expected_offset_appends_only_where_the_log_ends_and_a_retry_is_still_a_duplicate(
        client: RawClient) -> None:
    """A single writer's fence (version 7): a produce with ``expected_offset`` is appended
    only if the partition's log ends there; else OFFSET_MISMATCH and nothing stored.  The
    idempotence check comes first: a retry of a batch the broker has is a duplicate even
    though the log has moved on (the writer's own retry after a lost reply)."""
    client.ok("create_topic", topic="fence", partitions=2, config={"fsync": "never"})
    first = client.ok("produce", topic="fence", partition=1, expected_offset=0,
                      producer_id=9, sequence=0, records=[["a"], ["b"]])
    assert first["offsets"] == [[1, 0, 2]] and first["duplicate"] is False
    other = client.ok("produce", topic="fence", partition=1, records=[["zombie"]])
    assert other["offsets"] == [[1, 2, 1]]
    stale = client.call("produce", topic="fence", partition=1, expected_offset=2,
                        producer_id=9, sequence=2, records=[["c"]])
    assert stale["code"] == "OFFSET_MISMATCH", stale
    assert "fence[1] ends at offset 3, not 2" in stale["message"]
    retry = client.ok("produce", topic="fence", partition=1, expected_offset=0,
                      producer_id=9, sequence=0, records=[["a"], ["b"]])
    assert retry["offsets"] == [[1, 0, 2]] and retry["duplicate"] is True
    nxt = client.ok("produce", topic="fence", partition=1, expected_offset=3,
                    producer_id=9, sequence=2, records=[["c"]], acks="all")
    assert nxt["offsets"] == [[1, 3, 1]]
    ahead = client.call("produce", topic="fence", partition=1, expected_offset=9,
                        records=[["d"]])
    assert ahead["code"] == "OFFSET_MISMATCH"
    assert client.call("produce", topic="fence", expected_offset=0,
                       records=[["e"]])["code"] == "BAD_REQUEST", "no partition named"
    assert client.call("produce", topic="fence", partition=0, expected_offset=-1,
                       records=[["e"]])["code"] == "BAD_REQUEST"
    assert client.ok("fetch", topic="fence", partition=1, offset=0)["end_offset"] == 4
    assert client.ok("fetch", topic="fence", partition=0, offset=0)["end_offset"] == 0


def test_producer_fields_and_timestamps_out_of_range_are_bad_requests_that_create_nothing(
        client: RawClient) -> None:
    refused = [
        dict(partition=0, producer_id=5, records=[["x"]]),  # no sequence
        dict(producer_id=5, sequence=0, records=[["x"]]),  # no partition
        dict(partition=0, producer_id=5, sequence=-1, records=[["x"]]),
        dict(partition=0, producer_id=2**63, sequence=0, records=[["x"]]),
        dict(partition=0, producer_id=-1, sequence=0, records=[["x"]]),
        dict(partition=0, producer_id=5, sequence=2**31, records=[["x"]]),
        dict(partition=0, sequence=-2, records=[["x"]]),
        dict(records=[["x", None, None, 2**63]]),
        dict(records=[["x", None, None, -1]]),
    ]
    for fields in refused:
        reply = client.call("produce", topic="fresh", **fields)
        assert reply["op"] == "error" and reply["code"] == "BAD_REQUEST", (fields, reply)
    assert client.call("metadata", topics=["fresh"])["code"] == "UNKNOWN_TOPIC"

    client.ok("create_topic", topic="fresh")  # (a cluster creates topics only so)
    unknown = client.call("produce", topic="fresh", partition=0, producer_id=2**63 - 1,
                          sequence=2**31 - 1, records=[["x", None, None, 2**63 - 1]])
    assert unknown["code"] == "OUT_OF_ORDER_SEQUENCE", "an unknown producer starts at 0"
    edges = client.ok("produce", topic="fresh", partition=0, producer_id=2**63 - 1,
                      sequence=0, records=[["x", None, None, 2**63 - 1]])
    assert edges["offsets"] == [[0, 0, 1]]


def test_a_long_poll_fetch_is_answered_when_data_arrives(broker: BrokerProcess,
                                                         context: zmq.Context,
                                                         client: RawClient) -> None:
    client.ok("create_topic", topic="waiting", partitions=1)
    started = time.monotonic()
    parked = client.send("fetch", topic="waiting", partition=0, offset=0, max_wait_ms=20_000)
    assert not client.socket.poll(200)
    other = RawClient(broker.api, context)
    try:
        other.ok("produce", topic="waiting", records=[["wake up"]])
    finally:
        other.close()
    reply = client.wait(parked)
    assert time.monotonic() - started < 10
    [(offset, record)] = records_of(reply["batches"], 0)
    assert offset == 0 and record[0] == "wake up"


def test_list_offsets_and_metadata_describe_the_log(client: RawClient) -> None:
    client.ok("create_topic", topic="timed", partitions=1)
    client.ok("produce", topic="timed", partition=0,
              records=[["old", None, None, 1_000], ["new", None, None, 5_000]])
    assert client.ok("list_offsets", topic="timed", partition=0, timestamp=-2)["offset"] == 0
    assert client.ok("list_offsets", topic="timed", partition=0, timestamp=-1)["offset"] == 2
    assert client.ok("list_offsets", topic="timed", partition=0, timestamp=2_000)["offset"] == 1
    assert client.ok("list_offsets", topic="timed", partition=0, timestamp=9_000)["offset"] == 2
    [info] = client.ok("metadata", topics=["timed"])["topics"]
    assert info["name"] == "timed" and info["config"]["partitions"] == 1
    assert info["partitions"][0]["start_offset"] == 0
    assert info["partitions"][0]["end_offset"] == 2


# -- consumer groups -------------------------------------------------------------------------
def test_a_group_member_polls_commits_and_describe_group_shows_lag_zero(
        client: RawClient) -> None:
    client.ok("create_topic", topic="billing", partitions=2)
    client.ok("produce", topic="billing",
              records=[[f"e{i}", f"order-{i}"] for i in range(8)])
    joined = client.ok("join", group="accounts", topics=["billing"], client_id="raw",
                       session_timeout_ms=10_000)
    member, generation = joined["member_id"], joined["generation"]
    assert member.startswith("raw-") and generation >= 1
    assert joined["assignment"] == [["billing", 0], ["billing", 1]]
    assert joined["heartbeat_interval_ms"] == 10_000 // 3

    seen: list[Any] = []
    next_offsets: dict[int, int] = {}
    def drained() -> bool:
        reply = client.ok("poll", group="accounts", member_id=member, max_wait_ms=500)
        assert reply["generation"] == generation
        for part in reply["partitions"]:
            got = records_of(part["batches"], part["offset"])
            seen.extend(record[0] for _, record in got)
            next_offsets[part["partition"]] = got[-1][0] + 1 if got else part["offset"]
        return len(seen) >= 8
    wait_for(drained, timeout=10, what="8 records polled")
    assert sorted(seen) == sorted(f"e{i}" for i in range(8))

    client.ok("commit", group="accounts", member_id=member, generation=generation,
              offsets=[["billing", p, o] for p, o in next_offsets.items()])
    described = client.ok("describe_group", group="accounts")
    assert described["state"] == "stable" and described["generation"] == generation
    assert [m["member_id"] for m in described["members"]] == [member]
    for part in described["partitions"]:
        assert part["lag"] == 0 and part["committed"] == part["end_offset"]
        assert part["owner"] == member
    assert client.ok("heartbeat", group="accounts", member_id=member)["generation"] == generation
    assert "accounts" in client.ok("list_groups")["groups"]

    client.ok("leave", group="accounts", member_id=member)
    gone = client.call("heartbeat", group="accounts", member_id=member)
    assert gone["code"] == "NOT_MEMBER"
    assert client.ok("describe_group", group="accounts")["state"] == "empty"


def test_a_new_member_rebalances_wakes_a_parked_poll_and_fences_commits(
        broker: BrokerProcess, context: zmq.Context, client: RawClient) -> None:
    client.ok("create_topic", topic="shared", partitions=2)
    first = client.ok("join", group="pair", topics=["shared"], member_id="a-1")
    assert first["assignment"] == [["shared", 0], ["shared", 1]]
    parked = client.send("poll", group="pair", member_id="a-1", max_wait_ms=20_000)

    other = RawClient(broker.api, context)
    try:
        second = other.ok("join", group="pair", topics=["shared"], member_id="b-1")
        assert second["generation"] == first["generation"] + 1
        assert second["assignment"] == [["shared", 1]]  # round-robin over sorted member ids

        woken = client.wait(parked, timeout_s=5)  # answered at once, not after 20 s
        assert woken["generation"] == second["generation"]
        assert woken["assignment"] == [["shared", 0]]

        stale = client.call("commit", group="pair", member_id="a-1", offsets=[["shared", 1, 0]])
        assert stale["code"] == "STALE_GENERATION"
        anonymous = client.call("commit", group="pair", offsets=[["shared", 0, 0]])
        assert anonymous["code"] == "NOT_MEMBER" and "live members" in anonymous["message"]
        client.ok("commit", group="pair", member_id="a-1", offsets=[["shared", 0, 0]])

        other.ok("leave", group="pair", member_id="b-1")
        back = client.ok("heartbeat", group="pair", member_id="a-1")
        assert back["generation"] == second["generation"] + 1
        assert back["assignment"] == [["shared", 0], ["shared", 1]]
    finally:
        other.close()


def test_a_parked_poll_is_answered_within_half_the_session_and_the_member_stays(
        client: RawClient) -> None:
    client.ok("create_topic", topic="quiet", partitions=1)
    client.ok("join", group="short", topics=["quiet"], member_id="s-1", session_timeout_ms=1000)
    for _ in range(3):  # three long polls in a row, each longer than the session itself
        started = time.monotonic()
        reply = client.ok("poll", group="short", member_id="s-1", max_wait_ms=20_000)
        waited = time.monotonic() - started
        assert 0.4 <= waited < 0.95, waited  # min(20000, 1000 // 2) ms
        assert reply["partitions"] == [] and reply["assignment"] == [["quiet", 0]]
    assert client.ok("heartbeat", group="short", member_id="s-1")["generation"] == 1


def test_a_streaming_poll_answers_each_arrival_until_its_replies_run_out(
        broker: BrokerProcess, context: zmq.Context, client: RawClient) -> None:
    client.ok("create_topic", topic="ticker", partitions=1)
    client.ok("join", group="live", topics=["ticker"], member_id="l-1")
    streaming = client.send("poll", group="live", member_id="l-1", max_wait_ms=20_000,
                            replies=3)
    producer = RawClient(broker.api, context)
    try:
        seen = []
        for i in range(3):  # one produce at a time: each is one more reply to the same poll
            producer.ok("produce", topic="ticker", records=[[f"tick {i}"]])
            reply = client.recv()
            assert reply["op"] == "poll" and reply["id"] == streaming
            assert reply["more"] is (i < 2)  # the third reply is the last one
            seen.extend(r[0] for _, r in records_of(reply["partitions"][0]["batches"], 0))
        assert seen == ["tick 0", "tick 1", "tick 2"]

        producer.ok("produce", topic="ticker", records=[["tick 3"]])
        assert not client.socket.poll(300), "a finished stream must not answer again"
        plain = client.ok("poll", group="live", member_id="l-1")
        assert plain["more"] is False
        assert [r[0] for _, r in records_of(plain["partitions"][0]["batches"], 0)] == ["tick 3"]
    finally:
        producer.close()


def test_a_streaming_poll_ends_at_its_deadline_and_when_its_bytes_are_spent(
        client: RawClient) -> None:
    client.ok("create_topic", topic="brook", partitions=1)
    client.ok("join", group="bank", topics=["brook"], member_id="b-1", session_timeout_ms=1000)
    started = time.monotonic()
    streaming = client.send("poll", group="bank", member_id="b-1", max_wait_ms=20_000,
                            replies=100)
    client.ok("produce", topic="brook", records=[["one"]])
    first = client.wait(streaming)
    assert first["more"] is True and first["partitions"]
    last = client.wait(streaming)  # nothing more arrives: the deadline ends the stream
    assert last["more"] is False and last["partitions"] == []
    assert 0.4 <= time.monotonic() - started < 0.95  # min(20000, 1000 // 2) ms from arrival

    client.ok("produce", topic="brook", records=[["two"], ["three"]])
    spent = client.ok("poll", group="bank", member_id="b-1", max_wait_ms=20_000, replies=100,
                      max_bytes=1)  # the first batch spends the whole budget
    assert spent["more"] is False
    assert [r[0] for _, r in records_of(spent["partitions"][0]["batches"], 0)] == ["two", "three"]


def test_a_streaming_poll_sends_at_once_what_the_log_already_holds(client: RawClient) -> None:
    client.ok("create_topic", topic="backlog", partitions=1)
    for i in range(100):  # ~10 KiB batches: a read from the file stops short of the budget
        client.ok("produce", topic="backlog", records=[[f"{i:03d}" + "x" * 1000]] * 10)
    client.ok("join", group="catchup", topics=["backlog"], member_id="c-1")
    started = time.monotonic()
    streaming = client.send("poll", group="catchup", member_id="c-1", max_wait_ms=20_000,
                            replies=1000, max_bytes=35_000)
    replies = [client.wait(streaming, timeout_s=3)]
    while replies[-1]["more"]:  # each read that stopped short is followed at once
        replies.append(client.wait(streaming, timeout_s=3))
    assert time.monotonic() - started < 2.0, "the backlog waited for new data to arrive"
    seen = [r[0][:3] for reply in replies
            for _, r in records_of(reply["partitions"][0]["batches"], 0)]
    assert 35 <= len(seen) <= 50 and seen == sorted(seen)  # the budget, within one batch


def test_a_req_socket_cannot_stream(broker: BrokerProcess, context: zmq.Context,
                                    client: RawClient) -> None:
    client.ok("create_topic", topic="once", partitions=1)
    client.ok("join", group="solo", topics=["once"], member_id="o-1")
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(broker.api)
    try:
        req.send(msgpack.packb({"op": "poll", "id": 5, "group": "solo", "member_id": "o-1",
                                "replies": 2}))
        assert req.poll(10_000)
        refused = unpack(req.recv())
        assert refused["code"] == "BAD_REQUEST" and "DEALER" in refused["message"]
    finally:
        req.close(linger=0)
    too_many = client.call("poll", group="solo", member_id="o-1", replies=100_001)
    assert too_many["code"] == "BAD_REQUEST"


def test_start_latest_is_fixed_when_the_partition_is_assigned(client: RawClient) -> None:
    client.ok("create_topic", topic="late", partitions=1)
    client.ok("produce", topic="late", records=[["before the join"]])
    joined = client.ok("join", group="tail", topics=["late"], member_id="t-1", start="latest")
    assert joined["assignment"] == [["late", 0]]
    [part] = client.ok("describe_group", group="tail")["partitions"]
    assert (part["position"], part["committed"], part["owner"]) == (1, None, "t-1")
    client.ok("produce", topic="late", records=[["after the join"]])
    polled = client.ok("poll", group="tail", member_id="t-1")
    [data] = polled["partitions"]
    assert data["offset"] == 1
    assert [record[0] for _, record in records_of(data["batches"], 1)] == ["after the join"]


# -- errors ----------------------------------------------------------------------------------
def test_bad_requests_get_error_replies_with_a_stable_code(client: RawClient) -> None:
    def error(reply: dict[str, Any]) -> str:
        assert reply["op"] == "error" and reply["message"], reply
        return str(reply["code"])

    assert error(client.call("no_such_op")) == "UNKNOWN_OP"
    missing = client.call("produce", records=[["v"]])
    assert error(missing) == "BAD_REQUEST" and missing["id"] > 0
    assert error(client.call("produce", topic="e", records=[])) == "BAD_REQUEST"
    assert error(client.call("produce", topic="e", records=[["v", None, {"h": 1}]])) == \
        "BAD_REQUEST"
    assert error(client.call("produce", topic="bad name", records=[["v"]])) == "INVALID_TOPIC"
    assert error(client.call("join", group="g", topics=["e", "bad/name"])) == "INVALID_TOPIC"
    # A refused produce or join auto-creates nothing, not even its valid topic names.
    assert error(client.call("metadata", topics=["e"])) == "UNKNOWN_TOPIC"
    assert [t for t in client.ok("metadata")["topics"] if not t["name"].startswith("__")] == []
    assert client.ok("create_topic", topic="e")["created"] is True
    assert error(client.call("fetch", topic="e", partition=0, offset=0,
                             max_wait_ms=60_001)) == "BAD_REQUEST"
    assert error(client.call("fetch", topic="absent", partition=0, offset=0)) == \
        "UNKNOWN_TOPIC"
    assert error(client.call("fetch", topic="..", partition=0, offset=0)) == "INVALID_TOPIC"
    assert error(client.call("fetch", topic="e", partition=3, offset=0)) == "UNKNOWN_PARTITION"
    out_of_range = client.call("fetch", topic="e", partition=0, offset=99)
    assert error(out_of_range) == "OFFSET_OUT_OF_RANGE" and "e[0]" in out_of_range["message"]
    assert error(client.call("create_topic", topic="e")) == "TOPIC_EXISTS"
    assert client.ok("create_topic", topic="e", exist_ok=True)["created"] is False
    assert error(client.call("create_topic", topic="f", config={"nope": 1})) == "BAD_REQUEST"

    client.socket.send(b"\xc1")  # not msgpack: the id cannot be read, so it is 0 (and sent)
    garbled = client.recv()
    assert error(garbled) == "BAD_REQUEST" and garbled["id"] == 0
    assert set(garbled) == {"op", "id", "code", "message"}
    client.socket.send_multipart([b"not empty", b"body"])
    assert error(client.recv()) == "BAD_REQUEST"
    assert client.ok("ping")  # the broker keeps serving


def test_a_request_over_the_size_limit_is_message_too_large(client: RawClient) -> None:
    too_big = client.call("produce", topic="big", records=[[b"x" * (16 * 1024 * 1024)]])
    assert too_big["code"] == "MESSAGE_TOO_LARGE"
    over_batch = client.call("produce", topic="big", records=[[b"x" * (9 * 1024 * 1024)]])
    assert over_batch["code"] == "MESSAGE_TOO_LARGE"


# -- ingest ----------------------------------------------------------------------------------
def test_ingest_over_push_stores_raw_frames_as_bin(broker: BrokerProcess,
                                                   context: zmq.Context,
                                                   client: RawClient) -> None:
    client.ok("create_topic", topic="sensors", partitions=3)
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(broker.ingest)
    try:
        push.send_multipart([b"sensors", b"table-7", b"21.5C"])
        push.send_multipart([b"sensors", b"no key here"])
        push.send_multipart([b"../escape", b"dropped"])
    finally:
        push.close()

    def ends() -> list[int]:
        [info] = client.ok("metadata", topics=["sensors"])["topics"]
        return [p["end_offset"] for p in info["partitions"]]
    wait_for(lambda: sum(ends()) == 2, timeout=10, what="two ingested records")

    keyed = client.ok("fetch", topic="sensors", partition=partition_for(b"table-7", 3), offset=0)
    assert [b"21.5C", b"table-7"] in [r for _, r in records_of(keyed["batches"], 0)]
    everything = [r for p in range(3)
                  for _, r in records_of(client.ok("fetch", topic="sensors", partition=p,
                                                   offset=0)["batches"], 0)]
    assert [b"no key here"] in everything
    counts = client.ok("stats")["stats"]["counts"]
    assert counts.get("ingest_invalid") == 1 and counts.get("ingest_records") == 2


def test_raw_records_lets_a_client_skip_a_value_its_library_cannot_decode(
        client: RawClient) -> None:
    records = [[{b"bytes-key": 1}], ["fine"]]
    stored = msgpack.packb(records, use_bin_type=True)
    client.ok("create_topic", topic="odd", partitions=1)
    client.ok("produce", topic="odd", partition=0, records=records)
    fetched = client.ok("fetch", topic="odd", partition=0, offset=0, raw_records=True)
    [[base, _, raw]] = fetched["batches"]
    assert base == 0 and raw == stored, "one bin holding the stored bytes exactly"
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(raw)
    assert unpacker.read_array_header() == 2, "the bin is the records array, record by record"
    assert unpacker.unpack() == [{b"bytes-key": 1}]
    assert unpacker.unpack() == ["fine"]


def test_a_poll_answers_raw_records_and_an_unknown_member_is_not_member(
        client: RawClient) -> None:
    records = [[{b"bytes-key": 1}], ["fine"]]
    client.ok("create_topic", topic="odd", partitions=1)
    client.ok("produce", topic="odd", partition=0, records=records)
    joined = client.ok("join", group="odd-readers", topics=["odd"])
    polled = client.ok("poll", group="odd-readers", member_id=joined["member_id"],
                       raw_records=True)
    [data] = polled["partitions"]
    assert data["batches"][0][2] == msgpack.packb(records, use_bin_type=True)
    refused = client.call("poll", group="nobody", member_id="x")
    assert refused["code"] == "NOT_MEMBER" and refused["message"], refused
