"""A cluster whose brokers follow more partitions from one leader than a client may park
requests there (``max_waiting_per_client``, 64): a follower parks one replica fetch per
partition it follows, and the fetches past the 64th were refused (TOO_MANY_WAITING), then
retried every 0.2 s: 4,680 refusals per broker in 15 s of an idle 300-partition cluster,
twice its CPU, and up to 0.2 s more before each such partition's new batches were copied
(and acknowledged, with acks=all).  And a follower now asks each leader for all of its
partitions there in one ``replica_fetch_many``: an idle cluster's fetches no longer grow
with its partitions."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster.client import wait_in_sync
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
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
        time.sleep(1.5)
        before = [_fetches(api) for api in apis]
        time.sleep(3.0)
        grew = [_fetches(api) - b for api, b in zip(apis, before)]
        assert max(grew) <= 60, grew
    finally:
        for b in brokers:
            b.stop()


def _fetches(api: str) -> int:
    with RawClient(api) as raw:
        ops = raw.ok("stats")["stats"]["requests_by_op"]
    return ops.get("replica_fetch", 0) + ops.get("replica_fetch_many", 0)
