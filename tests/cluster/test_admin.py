"""Topic administration in a cluster, against a real ZooKeeper and three real brokers:
``delete_topic`` (with topic ids, so a topic deleted while a broker is down and created
again under its name never mixes with the old one's log), ``create_partitions`` and
``delete_records``; bad input gets the single broker's error codes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from brokerd.cluster.topic_id import read_topic_id
from runtime.client import BrokerError, Producer
from tests.cluster.client import (
    LeaderProducer,
    metadata,
    read_log,
    start_member,
    wait_in_sync,
)
from tests.cluster.test_groups_coordinator import coordinator_call, find_coordinator
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import BrokerProcess, wait_for
from tests.integration.wire import RawClient

T = "t" * 249  # the longest valid topic name


def _values(log: list[tuple[int, bytes]]) -> list[Any]:
    return [msgspec.msgpack.decode(r)[0] for _, r in log]


def _leader_api(apis: list[str], topic: str, partition: int) -> str:
    for api in apis:
        meta = metadata(api, topic)
        if meta is None:
            continue
        by_id = {b["id"]: b["api"] for b in meta["brokers"]}
        part = meta["topics"][0]["partitions"][partition]
        if by_id.get(part["leader"]) == api:
            return api
    raise AssertionError(f"no leader of {topic}[{partition}]")


def _consume(api: str, topic: str, partition: int) -> list[Any]:
    """Every record of the partition, fetched from its leader (``api``)."""
    out: list[Any] = []
    with RawClient(api) as raw:
        offset = raw.ok("list_offsets", topic=topic, partition=partition,
                        timestamp=-2)["offset"]
        end = raw.ok("list_offsets", topic=topic, partition=partition, timestamp=-1)["offset"]
        while offset < end:
            reply = raw.ok("fetch", topic=topic, partition=partition, offset=offset)
            for base, _, records in reply["batches"]:
                for i, record in enumerate(records):
                    if base + i >= offset:
                        out.append(record[0])
                offset = base + len(records)
    return out


@pytest.mark.parametrize("victim_role", ["follower", "controller"])
def test_a_topic_deleted_while_a_broker_is_down_and_created_again_never_mixes_logs(
        tmp_path: Path, zookeeper: ZooKeeper, victim_role: str) -> None:
    """The killed broker is a plain replica (the controller waits for its registration
    to expire before it completes the deletion) or the controller itself (the next
    controller completes the deletion the first one never saw).  The topic's name is the
    longest valid one: its znodes, replica folders and topic-id files all hold it."""
    brokers = start_three(tmp_path, zookeeper)
    ports = [int(b.api.rsplit(":", 1)[1]) for b in brokers]
    producer: Producer | None = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic=T, partitions=2)
            raw.ok("create_topic", topic="g", partitions=1)
        wait_in_sync(apis, T, 2, 3)
        wait_in_sync(apis, "g", 1, 3)
        with RawClient(apis[0]) as raw:
            controller = raw.ok("metadata", topics=[T])["controller"]
        old = LeaderProducer(apis, T, producer_id=1)
        for i in range(20):
            old.send(i % 2, [f"old-{i}"])
        old.close()
        victim = controller if victim_role == "controller" else next(
            i for i in range(3) if i != controller)
        old_id = read_topic_id(brokers[victim].data_dir / "topics" / T / "0")
        assert len(old_id) == 32
        brokers[victim].kill9()
        live = [b.api for i, b in enumerate(brokers) if i != victim]

        with RawClient(live[0]) as raw:
            raw.ok("delete_topic", topic=T)
            raw.ok("delete_topic", topic="g")  # and not created again
            assert raw.error_code("delete_topic", topic=T) == "UNKNOWN_TOPIC"  # deleting
            assert raw.error_code("delete_topic", topic="nope") == "UNKNOWN_TOPIC"
            assert raw.error_code("delete_topic", topic="__rail_offsets") == "BAD_REQUEST"
            # The deletion completes once the killed broker's registration expires (it
            # waits for every live replica): until then the name is taken.
            wait_for(lambda: raw.call("create_topic", topic=T, partitions=2)["op"]
                     == "create_topic", timeout=30, interval=0.2, what="the topic created again")
        wait_in_sync(live, T, 2, 2)
        assert [_consume(_leader_api(live, T, p), T, p) for p in range(2)] == [[], []]
        new = LeaderProducer(live, T, producer_id=2)
        for i in range(20):
            new.send(i % 2, [f"new-{i}"])
        new.close()

        # The victim comes back with the old topic's files: it deletes them (another id).
        brokers[victim] = start_member(tmp_path, zookeeper, victim, api_port=ports[victim])
        apis = [b.api for b in brokers]
        for name in (T, "g"):  # not a replica of the new t, and g is gone: no copies
            wait_for(lambda name=name: not (brokers[victim].data_dir / "topics" / name).exists(),
                     timeout=10, interval=0.1, what=f"the old copy of {name} deleted")
        with RawClient(brokers[victim].api) as raw:
            assert raw.error_code("create_partitions", topic=T, partitions=2) == "BAD_REQUEST"
            assert raw.error_code("create_partitions", topic="nope",
                                  partitions=3) == "UNKNOWN_TOPIC"
            assert raw.ok("create_partitions", topic=T, partitions=4)["partitions"] == 4
        wait_in_sync(apis, T, 4, 2)

        def every_leader_named() -> bool:  # by each broker, also of partitions it lacks
            metas = [metadata(api, T) for api in apis]
            return all(m is not None and all(p["leader"] >= 0 and len(p["replicas"]) == 2
                                             for p in m["topics"][0]["partitions"])
                       for m in metas)
        wait_for(every_leader_named, timeout=10, interval=0.1, what="metadata complete")
        producer = Producer(",".join(apis), acks="all", request_timeout_s=30)
        keyed = [f"key-{i}" for i in range(80)]
        for value in keyed:
            producer.send(T, value, key=value)
        producer.flush(timeout_s=60)
        assert not producer.errors, producer.errors[:3]
        consumed = {p: _consume(_leader_api(apis, T, p), T, p) for p in range(4)}
        assert sorted(v for vs in consumed.values() for v in vs) == sorted(
            keyed + [f"new-{i}" for i in range(20)])
        assert all(any(v.startswith("key") for v in consumed[p]) for p in (2, 3)), \
            "the producer did not route to the new partitions"
        with RawClient(brokers[victim].api) as raw:
            replicas = {p["partition"]: p["replicas"]
                        for p in raw.ok("metadata", topics=[T])["topics"][0]["partitions"]}
        assert any(victim in r for r in replicas.values())
    finally:
        if producer is not None:
            with contextlib.suppress(BrokerError):
                producer.close(timeout_s=1)
        for b in brokers:
            b.stop()
    _check_copies(brokers, T, replicas, consumed, old_id)
    assert not any((b.data_dir / "topics" / "g").exists() for b in brokers)


def _check_copies(brokers: list[BrokerProcess], topic: str, replicas: dict[int, list[int]],
                  consumed: dict[int, list[Any]], old_id: str) -> None:
    """Every replica holds what its leader served, record by record; no broker keeps a
    record of the deleted topic; every copy carries the new topic id."""
    ids = set()
    for i, b in enumerate(brokers):
        for p, holders in replicas.items():
            ids.add(read_topic_id(b.data_dir / "topics" / topic / str(p)))
            values = _values(read_log(b.data_dir, topic, p))
            assert not any(str(v).startswith("old") for v in values), (i, p)
            if i in holders:
                assert values == consumed[p], f"broker {i}'s copy of {topic}[{p}] differs"
    assert len(ids) == 1 and old_id not in ids, ids


def test_delete_records_moves_every_replicas_start_offset(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    config = tmp_path / "broker.toml"
    config.write_text("replica_lag_time_ms = 1500\n")  # a stopped follower leaves the ISR
    brokers: list[BrokerProcess] = []
    try:
        for i in range(3):
            brokers.append(start_member(tmp_path, zookeeper, i, "--config", str(config)))
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="d", partitions=1)
        leaders = wait_in_sync(apis, "d", 1, 3)
        producer = LeaderProducer(apis, "d", producer_id=3)
        for i in range(30):
            producer.send(0, [i])
        producer.close()
        leader = apis[leaders[0]]
        away = next(i for i, a in enumerate(apis) if a != leader)
        with RawClient(apis[away]) as raw:
            assert raw.error_code("delete_records", topic="d", partition=0,
                                  offset=5) == "NOT_LEADER"
        with RawClient(leader) as raw:
            assert raw.error_code("delete_records", topic="d", partition=0,
                                  offset=31) == "OFFSET_OUT_OF_RANGE"
            assert raw.error_code("delete_records", topic="nope", partition=0,
                                  offset=1) == "UNKNOWN_TOPIC"
            assert raw.error_code("delete_records", topic="d", partition=1,
                                  offset=1) == "UNKNOWN_PARTITION"
            assert raw.ok("delete_records", topic="d", partition=0,
                          offset=12)["start_offset"] == 12
            assert raw.ok("delete_records", topic="d", partition=0,
                          offset=3)["start_offset"] == 12  # below the start: no change
            assert raw.error_code("fetch", topic="d", partition=0,
                                  offset=11) == "OFFSET_OUT_OF_RANGE"
            assert raw.ok("fetch", topic="d", partition=0, offset=12)["batches"][0][0] == 12

        def starts() -> list[int]:
            out = []
            for api in apis:
                with RawClient(api) as raw:
                    out.append(raw.ok("list_offsets", topic="d", partition=0,
                                      timestamp=-2)["offset"])
            return out
        assert starts() == [12, 12, 12]  # answered once every in-sync replica moved

        # A follower away while records it lacks are deleted starts again at the start.
        port = int(apis[away].rsplit(":", 1)[1])
        brokers[away].stop()
        producer = LeaderProducer(apis, "d", producer_id=3, acks=1)
        producer.sequences[0] = 30
        for i in range(30, 40):
            producer.send(0, [i])
        producer.close()
        with RawClient(leader) as raw:
            wait_for(lambda: raw.call("delete_records", topic="d", partition=0, offset=40)[
                "op"] == "delete_records", timeout=15, interval=0.2,
                what="the high watermark at 40 once the stopped follower left the ISR")
        brokers[away] = start_member(tmp_path, zookeeper, away, "--config", str(config),
                                     api_port=port)
        wait_in_sync(apis, "d", 1, 3)
        wait_for(lambda: starts() == [40, 40, 40], timeout=10, interval=0.1,
                 what="every replica's start offset at 40")
        producer = LeaderProducer(apis, "d", producer_id=3)
        producer.sequences[0] = 40
        producer.send(0, [40])
        producer.close()
        wait_in_sync(apis, "d", 1, 3)
    finally:
        for b in brokers:
            b.stop()
    copies = [read_log(b.data_dir, "d", 0) for b in brokers]
    assert copies[0] == copies[1] == copies[2]
    assert [o for o, _ in copies[0]] == [40]
    assert _values(copies[0]) == [40]


def test_a_topic_from_before_topic_ids_gets_one_and_local_copies_adopt_it(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    from kazoo.client import KazooClient
    brokers = start_three(tmp_path, zookeeper)
    ports = [int(b.api.rsplit(":", 1)[1]) for b in brokers]
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start(10)
    try:
        apis = [b.api for b in brokers]
        tx = zk.transaction()  # as a broker without topic ids wrote it
        tx.create("/topics/legacy", msgspec.json.encode(
            {"config": {"replication_factor": 3, "min_insync_replicas": 2},
             "replicas": [[0, 1, 2]]}))
        tx.create("/topics/legacy/partitions")
        tx.create("/topics/legacy/partitions/0")
        tx.create("/topics/legacy/partitions/0/state", msgspec.json.encode(
            {"leader": 0, "leader_epoch": 0, "isr": [0, 1, 2], "controller_epoch": 0}))
        assert not any(isinstance(r, Exception) for r in tx.commit())
        wait_in_sync(apis, "legacy", 1, 3)
        topic_id = msgspec.json.decode(zk.get("/topics/legacy")[0])["topic_id"]
        assert len(topic_id) == 32
        producer = LeaderProducer(apis, "legacy", producer_id=4)
        for i in range(10):
            producer.send(0, [i])
        producer.close()
        # A follower's copy from before ids (no id stored) adopts ZooKeeper's id.
        follower = 2
        brokers[follower].stop()
        (brokers[follower].data_dir / "topics" / "legacy" / "0" / "partition.metadata").unlink()
        brokers[follower] = start_member(tmp_path, zookeeper, follower,
                                         api_port=ports[follower])
        wait_in_sync([b.api for b in brokers], "legacy", 1, 3)
        assert {read_topic_id(b.data_dir / "topics" / "legacy" / "0")
                for b in brokers} == {topic_id}
    finally:
        zk.stop()
        zk.close()
        for b in brokers:
            b.stop()
    copies = [_values(read_log(b.data_dir, "legacy", 0)) for b in brokers]
    assert copies == [list(range(10))] * 3


def test_deleting_a_topic_forgets_its_committed_offsets(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="x", partitions=1)
            raw.ok("create_topic", topic="y", partitions=1)
        wait_in_sync(apis, "x", 1, 3)
        wait_in_sync(apis, "y", 1, 3)
        _, coordinator = find_coordinator(apis[0], group="g")
        assert coordinator_call(coordinator, "commit", group="g",
                                offsets=[["x", 0, 0], ["y", 0, 0]])["op"] == "commit"

        def committed() -> set[str]:
            reply = coordinator_call(coordinator, "describe_group", group="g")
            return {p["topic"] for p in reply["partitions"] if p["committed"] is not None}
        assert committed() == {"x", "y"}
        with RawClient(apis[1]) as raw:
            raw.ok("delete_topic", topic="x")
        wait_for(lambda: committed() == {"y"}, timeout=10, interval=0.1,
                 what="the offsets of x forgotten")
    finally:
        for b in brokers:
            b.stop()
