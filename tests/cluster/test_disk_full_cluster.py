"""A full disk in a cluster, on a real 8 MiB tmpfs under one broker of three (mounting one
needs root: the test skips, saying why, without it).

A leader whose disk is full withdraws from the cluster (it steps down and deletes its
registration, as if dead to the controller): each partition it led moves to an in-sync
replica, producers retry there, and once a test write succeeds it registers again and
catches up as a follower.  A follower whose disk is full withdraws the same way, so it
leaves the in-sync replicas at once (not after ``replica_lag_time_ms`` of ``acks="all"``
produces waiting for it), waits (it does not fetch the same records again and again), and
once space returns joins again, catches up and rejoins the ISR.  Each time every replica
ends identical and nothing acknowledged is lost or duplicated.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

from runtime.consumer import Consumer
from runtime.producer import Producer
from tests.cluster.client import (
    LeaderProducer,
    check_replicas,
    create_in_sync,
    start_member,
    wait_in_sync,
)
from tests.cluster.test_groups_coordinator import find_coordinator
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import BrokerProcess, start_broker
from tests.integration.test_disk_full import fill, tmpfs
from tests.integration.test_fsync_failure import build_shim
from tests.integration.wire import RawClient

SMALL = 2  # the broker on the small disk


def small_disk(tmp_path: Path, broker_id: int) -> contextlib.AbstractContextManager[Path]:
    """An 8 MiB tmpfs as broker ``broker_id``'s data dir (its log stays outside)."""
    return tmpfs(tmp_path / f"b{broker_id}", "8m")


def start(tmp_path: Path, zookeeper: ZooKeeper, lag_ms: int = 1500) -> list[BrokerProcess]:
    return start_three(tmp_path, zookeeper, f"replica_lag_time_ms = {lag_ms}\n")


def space_back(filler: Path, apis: list[str], producer: LeaderProducer,
               count: int) -> list[tuple[int, int, Any]]:
    """Free the space; once every broker of ``apis`` is in sync again (the full one
    registered again and caught up), send ``count`` more: every acknowledged record."""
    os.unlink(filler)
    wait_in_sync(apis, "t", 1, len(apis))
    for i in range(count):
        producer.send(0, [f"after-{i}"])
    wait_in_sync(apis, "t", 1, len(apis))
    return list(producer.acked)


def test_a_follower_with_a_full_disk_leaves_the_isr_waits_and_catches_up(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    with small_disk(tmp_path, SMALL) as disk:
        _follower_full(tmp_path, disk, zookeeper)


def _follower_full(tmp_path: Path, disk: Path, zookeeper: ZooKeeper) -> None:
    # A lag time of 60 s: only the follower's withdrawal can take it out of the ISR soon.
    brokers = start(tmp_path, zookeeper, lag_ms=60_000)
    producer: LeaderProducer | None = None
    try:
        apis = [b.api for b in brokers]
        leaders = create_in_sync(apis, "t", 1, 3)
        assert leaders[0] != SMALL, leaders  # the assignment puts broker 0 first
        producer = LeaderProducer(apis, "t", producer_id=1)
        for i in range(20):
            producer.send(0, [f"before-{i}"])
        filler = disk / "filler"
        fill(filler)
        big = "x" * 2000
        started = time.monotonic()
        for i in range(200):  # ~400 KB the full follower cannot store
            producer.send(0, [f"full-{i}-{big}"])
        took = time.monotonic() - started
        assert took < 15, f"acks=all waited {took:.1f} s for the full follower"
        wait_in_sync(apis, "t", 1, 2)  # it left the ISR; acks="all" went on without it
        assert "withdrawing from the cluster" in brokers[SMALL].log()
        follower = psutil.Process(brokers[SMALL].pid)
        before = follower.cpu_times()
        time.sleep(3.0)
        after = follower.cpu_times()
        busy = (after.user + after.system - before.user - before.system) / 3.0
        assert busy < 0.25, f"the full follower spins: {busy:.0%} of a core"
        log = brokers[SMALL].log_path.read_text(errors="replace")
        assert 0 < log.count("No space left") <= 20, log.count("No space left")
        acked = space_back(filler, apis, producer, 20)
    finally:
        if producer is not None:
            producer.close()
        for b in brokers:
            b.stop()
    assert len(acked) == 240
    check_replicas(brokers, "t", 1, acked)


def test_a_leader_with_a_full_disk_withdraws_its_partitions_move_and_it_comes_back(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    with small_disk(tmp_path, 0) as disk:
        _leader_full(tmp_path, disk, zookeeper)


def _leader_full(tmp_path: Path, disk: Path, zookeeper: ZooKeeper) -> None:
    brokers = start(tmp_path, zookeeper)
    producer: LeaderProducer | None = None
    try:
        apis = [b.api for b in brokers]
        assert create_in_sync(apis, "t", 1, 3) == {0: 0}
        producer = LeaderProducer(apis, "t", producer_id=1)
        for i in range(20):
            producer.send(0, [f"before-{i}"])
        filler = disk / "filler"
        fill(filler)
        big = "x" * 2000
        started = time.monotonic()
        for i in range(100):  # the first meets the full disk: the leadership moves
            producer.send(0, [f"full-{i}-{big}"], deadline_s=30)
        assert "STORAGE_ERROR" in producer.errors, producer.errors
        moved_s = time.monotonic() - started
        with RawClient(apis[1]) as raw:
            meta = raw.ok("metadata", topics=["t"])
        part = meta["topics"][0]["partitions"][0]
        assert part["leader"] in (1, 2) and 0 not in part["isr"], part
        assert 0 not in [b["id"] for b in meta["brokers"]], "broker 0 is still registered"
        assert meta["controller"] in (1, 2), "the withdrawn controller kept its role"
        with RawClient(apis[0]) as raw:
            assert raw.ok("ping")["version"] >= 1, "the withdrawn broker keeps answering"
            assert raw.error_code("fetch", topic="t", partition=0, offset=0) == "NOT_LEADER"
            state = raw.ok("stats")["stats"]["cluster"]
            assert state["fenced"] and "No space left" in state["withdrawn"], state
        assert "withdrawing from the cluster" in brokers[0].log()
        acked = space_back(filler, apis, producer, 20)
        assert "joining the cluster again" in brokers[0].log()
        with RawClient(apis[0]) as raw:
            state = raw.ok("stats")["stats"]["cluster"]
            assert (state["fenced"], state["withdrawn"], state["broker_id"]) == (False, "", 0)
    finally:
        if producer is not None:
            producer.close()
        for b in brokers:
            b.stop()
    assert moved_s < 15, f"the leadership took {moved_s:.1f} s to move"
    assert len(acked) == 140
    check_replicas(brokers, "t", 1, acked)


def test_a_leader_whose_fsync_fails_withdraws_and_no_replica_diverges(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The failed fsync takes 200 ms, so the followers copy its batch meanwhile; the leader
    then cuts that batch from its own log.  Leading on, it would put the next producer's
    batch at the offsets where the followers hold this one."""
    shim = build_shim(tmp_path)
    trigger = tmp_path / "fail-next-fsync"
    config = tmp_path / "broker.toml"
    config.write_text("replica_lag_time_ms = 1500\n")
    brokers = [start_broker(tmp_path / "b0", "--broker-id", "0", "--zookeeper", zookeeper.hosts,
                            "--config", str(config), timeout=30.0,
                            env={"LD_PRELOAD": str(shim), "RAIL_TEST_FSYNC_FAIL": str(trigger),
                                 "RAIL_TEST_FSYNC_DELAY_MS": "200"})]
    producers: list[LeaderProducer] = []
    try:
        for i in (1, 2):
            brokers.append(start_member(tmp_path, zookeeper, i, "--config", str(config)))
        apis = [b.api for b in brokers]
        assert create_in_sync(apis, "t", 1, 3) == {0: 0}
        producers = [LeaderProducer(apis, "t", producer_id=n) for n in (1, 2)]
        for i in range(10):
            producers[i % 2].send(0, [f"before-{i}"])
        trigger.touch()
        with RawClient(apis[0]) as raw:
            failed = raw.call("produce", timeout_s=10, topic="t", partition=0, acks="all",
                              producer_id=1, sequence=producers[0].sequences[0],
                              records=msgspec.Raw(msgspec.msgpack.encode([["during-0"]])))
        assert failed.get("code") == "STORAGE_ERROR", failed
        assert not trigger.exists(), "the shim failed no fsync"
        producers[1].send(0, ["during-1"])  # another producer's batch first, then the retry
        for i in (0, *range(2, 20)):
            producers[i % 2].send(0, [f"during-{i}"], deadline_s=30)
        assert "withdrawing from the cluster" in brokers[0].log()
        wait_in_sync(apis, "t", 1, 3)
        for i in range(10):
            producers[i % 2].send(0, [f"after-{i}"])
        wait_in_sync(apis, "t", 1, 3)
        acked = [a for p in producers for a in p.acked]
    finally:
        for p in producers:
            p.close()
        for b in brokers:
            b.stop()
    assert len(acked) == 40
    check_replicas(brokers, "t", 1, acked)


def test_a_broker_elected_leader_with_a_full_disk_hands_the_leadership_on(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """Broker 1, next in line, cannot store its new leader epoch: it withdraws (it once
    died of the OSError), and broker 2 leads."""
    with small_disk(tmp_path, 1) as disk:
        brokers = start(tmp_path, zookeeper)
        producer: LeaderProducer | None = None
        try:
            apis = [b.api for b in brokers]
            assert create_in_sync(apis, "t", 1, 3, config={"min_insync_replicas": 1}) == {0: 0}
            producer = LeaderProducer(apis, "t", producer_id=1)
            for i in range(20):
                producer.send(0, [f"before-{i}"])
            filler = disk / "filler"
            fill(filler)
            brokers[0].kill9()
            producer.send(0, ["after-kill"], deadline_s=30)
            with RawClient(apis[2]) as raw:
                part = raw.ok("metadata", topics=["t"])["topics"][0]["partitions"][0]
            assert part["leader"] == 2, part
            assert brokers[1].proc.poll() is None, brokers[1].log()[-2000:]
            assert "withdrawing from the cluster" in brokers[1].log()
            acked = space_back(filler, apis[1:], producer, 10)
        finally:
            if producer is not None:
                producer.close()
            for b in brokers:
                b.stop()
        assert len(acked) == 31
        copies = check_replicas(brokers[1:], "t", 1, acked)  # before the tmpfs goes
        assert len(copies["0"][0]) == len(copies["1"][0]) == 31


def test_the_python_producer_rides_out_a_leader_withdrawing_for_its_disk(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The client a user has: a keyed ``acks="all"`` stream over three partitions, broker 0
    (leader of one) fills its disk: every event is acknowledged, none fails, and a group
    consumer reads each once."""
    with small_disk(tmp_path, 0) as disk:
        brokers = start(tmp_path, zookeeper)
        try:
            apis = [b.api for b in brokers]
            create_in_sync(apis, "t", 3, 3)
            producer = Producer(",".join(apis), acks="all")
            for i in range(100):
                producer.send("t", f"a{i}", key=str(i))
            producer.flush(timeout_s=30)
            fill(disk / "filler")
            for i in range(3000):  # ~6 MB: the first to partition 0 fills broker 0
                producer.send("t", f"b{i}-" + "x" * 2000, key=str(i))
            producer.flush(timeout_s=60)
            assert not producer.errors, producer.errors[:3]
            producer.close()
            assert "withdrawing from the cluster" in brokers[0].log()
            os.unlink(disk / "filler")
            wait_in_sync(apis, "t", 3, 3)
            consumer = Consumer(",".join(apis), group="g", topics=["t"])
            got: list[str] = []
            try:
                deadline = time.monotonic() + 60
                while len(got) < 3100 and time.monotonic() < deadline:
                    got += [e.value for e in consumer.poll(timeout_s=0.2)]
            finally:
                consumer.close()
            assert len(got) == 3100 and len(set(got)) == 3100
        finally:
            for b in brokers:
                b.stop()


def test_a_group_rides_out_its_coordinator_withdrawing_for_its_disk(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The first write to hit broker 0's full disk is a commit of a group it coordinates:
    the member's ``commit()`` does not raise (it raised STORAGE_ERROR), it finds the new
    coordinator and rejoins, reads every event and its last commit is stored there."""
    with small_disk(tmp_path, 0) as disk:
        brokers = start(tmp_path, zookeeper)
        try:
            apis = [b.api for b in brokers]
            create_in_sync(apis, "t", 1, 3)  # led by broker 0: nothing written there later
            group = next(g for g in (f"g{i}" for i in range(200))
                         if find_coordinator(apis[1], g)[0] == 0)
            with Producer(",".join(apis), acks="all") as producer:
                for i in range(2000):
                    producer.send("t", i)
                producer.flush(timeout_s=30)
            def committed() -> list[tuple[int, int]]:
                coordinator, api = find_coordinator(apis[1], group)
                if coordinator == 0:
                    return []
                with RawClient(api) as raw:
                    reply = raw.call("describe_group", group=group)
                return [(d["partition"], d["committed"]) for d in reply.get("partitions", [])]

            consumer = Consumer(",".join(apis), group=group, topics=["t"])
            seen: set[int] = set()
            try:
                fill(disk / "filler")
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    seen.update(e.value for e in consumer.poll(timeout_s=0.2))
                    consumer.commit()  # each one may be the write that fills the disk
                    if "withdrawing" in brokers[0].log() and committed() == [(0, 2000)]:
                        break
            finally:
                consumer.close()
            assert "withdrawing from the cluster" in brokers[0].log()
            assert seen == set(range(2000))
            assert committed() == [(0, 2000)], "the last commit is at the new coordinator"
        finally:
            for b in brokers:
                b.stop()
