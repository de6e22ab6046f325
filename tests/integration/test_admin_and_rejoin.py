"""Broker fixes of issue 10: a re-join under the same member id, long topic names, and the
admin ops (grow a topic, delete records, delete a group), each against a real broker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import zmq

from tests.helpers import ROOT, BrokerProcess, python_env, start_broker, wait_for
from tests.integration.wire import RawClient

LONG = "t" * 249  # the longest valid topic name


def records(values: list[int]) -> msgspec.Raw:
    return msgspec.Raw(msgspec.msgpack.encode([[v] for v in values]))


def _values_of(reply: dict) -> list[tuple[int, int]]:
    """(partition, value) of every record a poll reply carried, at or past its offset."""
    out = []
    for part in reply["partitions"]:
        for base, _, recs in part["batches"]:
            for i, rec in enumerate(recs):
                if base + i >= part["offset"]:
                    out.append((part["partition"], rec[0]))
    return out


MEMBER = textwrap.dedent("""
    import sys, msgspec, zmq
    api, group, member = sys.argv[1:4]
    s = zmq.Context().socket(zmq.DEALER)
    s.connect(api)
    enc = msgspec.msgpack.encode
    s.send(enc({"op": "join", "id": 1, "group": group, "topics": ["t"], "member_id": member,
                "session_timeout_ms": 30000}))
    s.recv()
    s.send(enc({"op": "poll", "id": 2, "group": group, "member_id": member,
                "max_wait_ms": 60000, "replies": 1000}))
    print("parked", flush=True)
    while True:
        s.recv()
""")


def test_a_rejoin_under_the_same_member_id_gets_every_record_after_a_kill_9(
        broker: BrokerProcess) -> None:
    with RawClient(broker.api) as admin:
        admin.ok("create_topic", topic="t", partitions=3)
    old = subprocess.Popen([sys.executable, "-c", MEMBER, broker.api, "g", "worker-1"],
                           stdout=subprocess.PIPE, text=True, env=python_env(), cwd=ROOT)
    try:
        assert old.stdout is not None and old.stdout.readline().strip() == "parked"
        wait_for(lambda: _parked(broker), what="the streaming poll to park")
        old.kill()  # kill -9: its parked poll stays at the broker, its session live
        old.wait(5)
    finally:
        if old.poll() is None:
            old.kill()
            old.wait(5)
    with RawClient(broker.api) as new, RawClient(broker.api) as producer:
        joined = new.ok("join", group="g", topics=["t"], member_id="worker-1",
                        session_timeout_ms=30000)
        assert joined["member_id"] == "worker-1" and len(joined["assignment"]) == 3
        sent = list(range(300))
        for i in range(0, 300, 10):
            producer.ok("produce", topic="t", records=records(sent[i:i + 10]))
        got: list[int] = []
        for _ in range(50):
            reply = new.ok("poll", group="g", member_id="worker-1", max_wait_ms=200)
            got += [v for _, v in _values_of(reply)]
            if len(got) >= len(sent):
                break
        assert sorted(got) == sent, f"{len(set(sent) - set(got))} records never delivered"


def _parked(broker: BrokerProcess) -> bool:
    with RawClient(broker.api) as raw:
        return raw.ok("describe_group", group="g")["members"] != []


def test_topic_names_of_249_characters_work_on_every_path(broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw:
        assert raw.ok("create_topic", topic=LONG, partitions=2)["topic"] == LONG
        assert raw.ok("produce", topic="u" * 248, records=records([1]))["offsets"]  # auto-create
        raw.ok("join", group="g" * 249, topics=["v" * 247])
        raw.ok("delete_topic", topic=LONG)
        assert raw.ok("create_topic", topic=LONG)["created"]
        raw.ok("delete_topic", topic=LONG)
        assert raw.error_code("create_topic", topic="x" * 250) == "INVALID_TOPIC"
        assert raw.error_code("create_topic", topic="../etc") == "INVALID_TOPIC"
    push = zmq.Context.instance().socket(zmq.PUSH)
    try:
        push.connect(broker.ingest)
        push.send_multipart([("w" * 249).encode(), b"one ingest frame"])
        push.send_multipart([b"../etc", b"dropped"])
    finally:
        push.close(linger=2000)
    with RawClient(broker.api) as raw:
        wait_for(lambda: raw.ok("metadata")["topics"] and any(
            t["name"] == "w" * 249 and t["partitions"][0]["end_offset"] == 1
            for t in raw.ok("metadata")["topics"]), what="the ingested record")
        assert raw.ok("ping")["version"] >= 2, "the broker kept serving"
    assert broker.proc.poll() is None
    assert not [p for p in (broker.data_dir / "topics").iterdir() if p.name.startswith(".")]


def test_a_topic_grows_and_keeps_its_partitions_across_a_restart(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "data")
    try:
        with RawClient(broker.api) as raw:
            raw.ok("create_topic", topic="t", partitions=2)
            raw.ok("produce", topic="t", partition=1, records=records([7]))
            assert raw.error_code("create_partitions", topic="t", partitions=2) == "BAD_REQUEST"
            assert raw.error_code("create_partitions", topic="nope", partitions=3) == \
                "UNKNOWN_TOPIC"
            assert raw.ok("create_partitions", topic="t", partitions=5)["partitions"] == 5
            raw.ok("produce", topic="t", partition=4, records=records([8]))
    finally:
        broker.stop()
    broker = start_broker(tmp_path / "data")
    try:
        with RawClient(broker.api) as raw:
            parts = raw.ok("metadata", topics=["t"])["topics"][0]["partitions"]
            assert [x["end_offset"] for x in parts] == [0, 1, 0, 0, 1]
    finally:
        broker.stop()


def test_delete_records_moves_the_start_for_good(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "data")
    try:
        with RawClient(broker.api) as raw:
            raw.ok("create_topic", topic="t", partitions=1)
            for i in range(10):
                raw.ok("produce", topic="t", records=records([i, i]))
            assert raw.ok("delete_records", topic="t", partition=0, offset=6)["start_offset"] == 6
            assert raw.error_code("fetch", topic="t", partition=0, offset=5) == \
                "OFFSET_OUT_OF_RANGE"
            assert raw.error_code("delete_records", topic="t", partition=0, offset=21) == \
                "OFFSET_OUT_OF_RANGE"
            raw.ok("join", group="g", topics=["t"])
    finally:
        broker.stop()
    broker = start_broker(tmp_path / "data")
    try:
        with RawClient(broker.api) as raw:
            part = raw.ok("metadata", topics=["t"])["topics"][0]["partitions"][0]
            assert (part["start_offset"], part["end_offset"]) == (6, 20)
            member = raw.ok("join", group="g2", topics=["t"])["member_id"]
            first = raw.ok("poll", group="g2", member_id=member)["partitions"][0]
            assert first["offset"] == 6
            assert raw.ok("delete_records", topic="t", partition=0, offset=-1)["start_offset"] == 20
    finally:
        broker.stop()


def test_a_group_is_deleted_only_when_it_has_no_members(broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw:
        member = raw.ok("join", group="g", topics=["t"], session_timeout_ms=30000)["member_id"]
        raw.ok("produce", topic="t", records=records([1]))
        raw.ok("commit", group="g", member_id=member, offsets=[["t", 0, 1]])
        assert raw.error_code("delete_group", group="g") == "GROUP_NOT_EMPTY"
        assert raw.error_code("delete_group", group="nope") == "UNKNOWN_GROUP"
        raw.ok("leave", group="g", member_id=member)
        raw.ok("delete_group", group="g")
        assert "g" not in raw.ok("list_groups")["groups"]
        member = raw.ok("join", group="g", topics=["t"])["member_id"]
        described = raw.ok("describe_group", group="g")
        assert described["partitions"][0]["committed"] is None, "its offsets went with it"


def test_control_characters_in_client_strings_cannot_forge_log_lines(
        broker: BrokerProcess) -> None:
    forged = "g\n2026-01-01 00:00:00,000 brokerd ERROR forged: disk on fire\x00\x1b[2J"
    with RawClient(broker.api) as raw:
        member = raw.ok("join", group=forged, topics=["t"], member_id="m\r\nx")["member_id"]
        raw.ok("leave", group=forged, member_id=member)
        raw.ok("ping")
    broker.stop()
    text = broker.log()
    assert "forged" in text, "the group's name is logged"
    assert not any(line.startswith("2026-01-01") for line in text.splitlines())
    assert "\x00" not in text and "\x1b" not in text and "\r" not in text
    assert "g\\n2026-01-01" in text
