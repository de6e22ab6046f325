"""A cluster whose brokers follow more partitions from one leader than a client may park
requests there (``max_waiting_per_client``, 64): a follower parks one replica fetch per
partition it follows, and the fetches past the 64th were refused (TOO_MANY_WAITING), then
retried every 0.2 s: 4,680 refusals per broker in 15 s of an idle 300-partition cluster,
twice its CPU, and up to 0.2 s more before each such partition's new batches were copied
(and acknowledged, with acks=all).  And a follower now asks each leader for all of its
partitions there in one ``replica_fetch_many``: an idle cluster's fetches no longer grow
with its partitions."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.cluster.client import wait_in_sync
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import wait_for
from tests.integration.wire import RawClient

PARTITIONS = 210  # 70 led by each broker, followed by each of the two others


def test_followers_park_a_fetch_for_every_partition_they_follow(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=PARTITIONS)
        leaders = wait_in_sync(apis, "t", PARTITIONS, 3, timeout=60)
        assert min(list(leaders.values()).count(b) for b in range(3)) > 64
        # acks=all to every partition, through its leader: each answered.
        for part, leader in leaders.items():
            with RawClient(apis[leader]) as raw:
                raw.ok("produce", topic="t", partition=part, acks="all",
                       records=[[f"v-{part}"]], timeout_s=10.0)
        refused = 0
        for api in apis:
            with RawClient(api) as raw:
                counts = raw.ok("stats")["stats"]["counts"]
            refused += counts.get("error.TOO_MANY_WAITING", 0)
        assert refused == 0
        # Idle: a parked replica_fetch_many per follower and leader, answered every
        # 0.5-0.75 s, where one fetch per partition made 840 requests in 3 s per broker.
        # (A partition whose last answer brought batches is fetched alone until one
        # comes back empty, 0.5 s later.)
        # And their answers at the deadline leave out the idle parts, whose followers
        # know all an empty answer would tell (high watermark, start, epoch: KIP-227's
        # point); each of the 140 parts a broker leads for its two followers was answered
        # at each deadline: ~1,100 in 3 s.
        time.sleep(1.5)
        before = [_fetches(api) for api in apis]
        answered = [_answered(api) for api in apis]
        time.sleep(3.0)
        grew = [_fetches(api) - b for api, b in zip(apis, before)]
        assert max(grew) <= 60, grew
        parts = [_answered(api) - a for api, a in zip(apis, answered)]
        assert max(parts) <= 10, parts
        assert set(_follower_hws(apis, leaders).values()) == {1}
        # Still copied and acknowledged at once when batches come, and the followers learn
        # the high watermark they moved (their next fetch shows it to the leader).
        for part, leader in leaders.items():
            if part >= 30:
                continue
            with RawClient(apis[leader]) as raw:
                raw.ok("produce", topic="t", partition=part, acks="all",
                       records=[[f"w-{part}"]], timeout_s=10.0)
        wait_for(lambda: {hw for (_, part), hw in _follower_hws(apis, leaders).items()
                          if part < 30} == {2}, 10, what="each follower's high watermark at 2")
    finally:
        for b in brokers:
            b.stop()


def test_an_idle_follower_learns_a_high_watermark_that_moved_without_a_fetch(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The high watermark moves when a stopped follower leaves the ISR, with no fetch and
    no batch: the follower that holds everything, idle by then, must still be told (its
    leader may leave out an idle part only when its follower knows the high watermark)."""
    brokers = start_three(tmp_path, zookeeper, "replica_lag_time_ms = 1500\n")
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=1)
        leader = wait_in_sync(apis, "t", 1, 3)[0]
        awake, stopped = (leader + 1) % 3, (leader + 2) % 3
        os.kill(brokers[stopped].pid, signal.SIGSTOP)
        try:
            with RawClient(apis[leader]) as raw:
                raw.ok("produce", topic="t", partition=0, acks=1,
                       records=[[f"v{i}"] for i in range(5)])
            wait_for(lambda: _hw(apis[leader]) == 5, 15,
                     what="the leader's high watermark at 5, the stopped follower out")
            wait_for(lambda: _hw(apis[awake]) == 5, 5,
                     what="the awake follower's high watermark at 5")
        finally:
            os.kill(brokers[stopped].pid, signal.SIGCONT)
    finally:
        for b in brokers:
            b.stop()


def _hw(api: str) -> int:
    with RawClient(api) as raw:
        return int(raw.ok("stats")["stats"]["topics"]["t"][0]["high_watermark"])


def _answered(api: str) -> int:
    with RawClient(api) as raw:
        return int(raw.ok("stats")["stats"]["counts"].get("replica_parts_answered", 0))


def _follower_hws(apis: list[str], leaders: dict[int, int]) -> dict[tuple[int, int], int]:
    """The high watermark of each partition on each of its followers: (broker, partition)."""
    hws = {}
    for broker, api in enumerate(apis):
        with RawClient(api) as raw:
            parts = raw.ok("stats")["stats"]["topics"]["t"]
        hws.update({(broker, part): parts[part]["high_watermark"]
                    for part, leader in leaders.items() if leader != broker})
    return hws


def _fetches(api: str) -> int:
    with RawClient(api) as raw:
        ops = raw.ok("stats")["stats"]["requests_by_op"]
    return ops.get("replica_fetch", 0) + ops.get("replica_fetch_many", 0)
