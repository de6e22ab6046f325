"""A leader whose copy of a partition is damaged on disk (a flipped bit in a closed
segment) hands the partition to an in-sync replica and copies the damaged part again
from it, instead of serving the damage to consumers and followers: a follower that had
to copy the partition from the start could never catch up, and a consumer's reply that
carried the batch could not be decoded at all."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.cluster.client import (
    LeaderProducer,
    check_replicas,
    create_in_sync,
    metadata,
    start_member,
    wait_in_sync,
)
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import wait_for
from tests.integration.wire import RawClient


def flip_a_byte(segment: Path, at: int) -> None:
    data = bytearray(segment.read_bytes())
    data[at] ^= 0xFF
    segment.write_bytes(data)


def _sixty_batches(apis: list[str], producer_id: int) -> tuple[int, LeaderProducer]:
    """Topic ``t`` (one partition, 4 KiB segments) in sync on the three brokers, with 60
    batches of 5 records acknowledged by all: its leader, and the producer."""
    leader = create_in_sync(apis, "t", 1, 3, config={"segment_bytes": 4096})[0]
    producer = LeaderProducer(apis, "t", producer_id=producer_id)
    for i in range(60):
        producer.send(0, [f"v-{i}-{j}-" + "x" * 100 for j in range(5)])
    return leader, producer


def _led_elsewhere(api: str, leader: int) -> int:
    """Wait until the broker at ``api`` names a leader of t[0] other than ``leader``."""
    def new_leader() -> int | None:
        meta = metadata(api, "t")
        found = meta["topics"][0]["partitions"][0]["leader"] if meta else -1
        return None if found in (-1, leader) else found
    return wait_for(new_leader, timeout=60, interval=0.2,
                    what="the partition led by another broker")


def test_a_leader_with_a_damaged_batch_steps_aside_and_copies_it_again(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    apis = [b.api for b in brokers]
    try:
        leader, producer = _sixty_batches(apis, producer_id=7)
        # A follower's disk is replaced: it must copy the whole partition again.
        wiped = next(i for i in range(3) if i != leader)
        port = int(apis[wiped].rsplit(":", 1)[1])
        brokers[wiped].kill9()
        shutil.rmtree(brokers[wiped].data_dir / "topics" / "t")
        # Meanwhile a bit flips in the leader's first segment (closed, indexed: nothing
        # checks it until it is read).
        segments = sorted((brokers[leader].data_dir / "topics" / "t" / "0").glob("*.log"))
        assert len(segments) > 3
        flip_a_byte(segments[0], 200)
        brokers[wiped] = start_member(tmp_path, zookeeper, wiped, api_port=port)
        _led_elsewhere(apis[wiped], leader)
        for i in range(10):  # writes go on, to the new leader
            producer.send(0, [f"after-{i}"])
        # Every copy whole again: the damaged one too, cut back and copied again.
        wait_in_sync(apis, "t", 1, 3, timeout=90)
        producer.close()
    finally:
        for b in brokers:
            b.stop()
    assert "cut back to offset 0" in brokers[leader].log_path.read_text()
    logs = check_replicas(brokers, "t", 1, producer.acked)
    assert len(logs["0"][0]) == 60 * 5 + 10


def test_a_consumer_reading_a_damaged_batch_moves_the_partition_to_a_good_copy(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The followers hold everything already, so no replica fetch reads the damaged
    segment again: a consumer's read finds it, gets STORAGE_ERROR (never the damaged
    bytes), and finds the partition, whole, at its new leader."""
    brokers = start_three(tmp_path, zookeeper)
    apis = [b.api for b in brokers]
    try:
        leader, producer = _sixty_batches(apis, producer_id=8)
        segments = sorted((brokers[leader].data_dir / "topics" / "t" / "0").glob("*.log"))
        flip_a_byte(segments[0], 200)
        with RawClient(apis[leader]) as raw:
            reply = raw.call("fetch", topic="t", partition=0, offset=0, max_bytes=100_000)
        assert reply["op"] == "error" and reply["code"] == "STORAGE_ERROR", reply
        moved_to = _led_elsewhere(apis[next(i for i in range(3) if i != leader)], leader)

        def served() -> list[str] | None:  # once its high watermark reached the end again
            with RawClient(apis[moved_to]) as raw:
                got = raw.call("fetch", topic="t", partition=0, offset=0, max_bytes=1 << 20)
            assert got["op"] == "fetch", got  # (a preferred-leader move back waits 300 s)
            values = [r[0] for b in got["batches"] for r in b[2]]
            return values if len(values) == 300 else None
        values = wait_for(served, timeout=30, interval=0.2, what="300 records at the leader")
        assert values[:5] == [f"v-0-{j}-" + "x" * 100 for j in range(5)]
        wait_in_sync(apis, "t", 1, 3, timeout=90)
        producer.close()
    finally:
        for b in brokers:
            b.stop()
    logs = check_replicas(brokers, "t", 1, producer.acked)
    assert len(logs["0"][0]) == 300
