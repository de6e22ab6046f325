"""A rolling upgrade: a cluster of three brokers of an older version (the last before
protocol 8, its ``brokerd`` exported from this repository's history) has each broker
stopped and started again as this version, in turn, on the same endpoint, under an
``acks="all"`` producer and a group of two members.

While the versions are mixed, this version's followers ask an old leader with
``replica_fetch_many``, are answered ``UNKNOWN_OP`` and fetch from it one partition at a
time (the fallback of ``brokerd/cluster/fetcher.py``, tested nowhere else); the old
followers fetch from the new leaders with ``replica_fetch``; every broker reads the
others' znodes. Without the fallback an old leader's partitions would keep no new follower
in sync, and ``acks="all"`` there would wait for ever. The whole history is checked as in
the rolling restart: nothing acknowledged lost or duplicated, offsets dense, the group's
committed offsets never backward, the replicas identical.  Once every broker is upgraded
the followers ask in ``replica_fetch_many`` again."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from runtime.client import Producer
from tests.cluster.client import Stream, check_replicas, start_member, wait_in_sync
from tests.cluster.test_cluster_consumer import Reader
from tests.cluster.test_rolling_restart import check_group_read_all
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import ROOT, BrokerProcess, start_broker, wait_for
from tests.integration.wire import RawClient

OLD = "536e532"  # protocol 7: the commit before replica_fetch_many
PARTITIONS = 4
FALLBACK_LINE = "does not know replica_fetch_many"
IDLE_S = 2.0  # a follower's fetch waits 0.5 s (and up to 0.25 s more) before it is idle


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The old version's ``brokerd``, as ``git archive`` exports it."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD, "brokerd"],
                                 capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"commit {OLD} is not in this checkout (a shallow clone?): {exc}")
    folder = tmp_path_factory.mktemp(f"rail-{OLD}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def copied(api: str, topic: str) -> dict[int, int]:
    """The end offset of the broker's own copy of each partition of ``topic``."""
    with RawClient(api) as raw:
        return {part["partition"]: part["end_offset"]
                for part in raw.ok("stats")["stats"]["topics"][topic]}


def single_fetches(apis: list[str]) -> int:
    """The ``replica_fetch`` requests the brokers have served."""
    total = 0
    for api in apis:
        with RawClient(api) as raw:
            total += raw.ok("stats")["stats"]["requests_by_op"].get("replica_fetch", 0)
    return total


def one_each(producer: Producer, value: str) -> None:
    """A record to each partition of ``quiet``, acknowledged."""
    for part in range(PARTITIONS):
        producer.send("quiet", value, partition=part)
    producer.flush(timeout_s=60)


def start_old(folder: Path, zk: ZooKeeper, broker_id: int, release: Path) -> BrokerProcess:
    return start_broker(folder / f"b{broker_id}", "--broker-id", str(broker_id),
                        "--zookeeper", zk.hosts, timeout=30.0, cwd=release)


def test_a_rolling_upgrade_from_protocol_7_under_a_producer_and_a_group_loses_nothing(
        tmp_path: Path, zookeeper: ZooKeeper, old_release: Path) -> None:
    brokers: list[BrokerProcess] = []
    stream: Stream | None = None
    quiet: Producer | None = None
    readers: list[Reader] = []
    try:
        for i in range(3):
            brokers.append(start_old(tmp_path, zookeeper, i, old_release))
        ports = [int(b.api.rsplit(":", 1)[1]) for b in brokers]
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            assert raw.ok("ping")["version"] == 7  # the old version, not this one
            raw.ok("create_topic", topic="t", partitions=PARTITIONS)
            raw.ok("create_topic", topic="quiet", partitions=PARTITIONS)
        wait_in_sync(apis, "t", PARTITIONS, 3)
        wait_in_sync(apis, "quiet", PARTITIONS, 3)
        quiet = Producer(",".join(apis), acks="all", request_timeout_s=30)
        one_each(quiet, "before")
        stream = Stream(apis, request_timeout_s=30)
        readers = [Reader(",".join(apis), timeout_s=30) for _ in range(2)]

        def consumed() -> int:
            return sum(sum(map(len, r.seen.values())) for r in readers)
        wait_for(lambda: consumed() >= 500, 60, what="500 events before the upgrade")
        for i in range(3):
            at = consumed()
            assert brokers[i].stop() == 0
            brokers[i] = start_member(tmp_path, zookeeper, i, api_port=ports[i])
            with RawClient(apis[i]) as raw:
                assert raw.ok("ping")["version"] >= 8
            # every partition in sync again: those an old broker leads with this
            # version's follower too, which only the fallback lets catch up
            wait_in_sync(apis, "t", PARTITIONS, 3, timeout=60)
            wait_for(lambda: consumed() >= at + 300, 60, what="300 more events")
            # the upgraded broker's own copy of every partition holds what was acked by
            # then, of the old leaders' partitions too (an ISR seen above may predate its
            # stop): of "t", always busy, fetched with replica_fetch, and of "quiet", idle
            # for longer than a fetch's wait, asked for in a replica_fetch_many
            time.sleep(IDLE_S)
            one_each(quiet, f"after {i}")
            assert not quiet.errors, quiet.errors
            for topic, ends in (("t", stream.ends()), ("quiet", {p: i + 2 for p in
                                                                  range(PARTITIONS)})):
                wait_for(lambda: all(end >= ends.get(part, 0) for part, end in
                                     copied(apis[i], topic).items()), 30,
                         what=f"upgraded broker {i} copying every partition of {topic}")
            if i == 0:  # two old leaders, every partition led by one
                assert FALLBACK_LINE in brokers[0].log()
        stream.finish()
        # Every broker upgraded: the followers that fell back ask in replica_fetch_many
        # again, so idle partitions cost no replica_fetch a deadline (a leader's restart
        # on its endpoint clears the fallback; 29 in 3 s from one follower that kept it)
        time.sleep(IDLE_S)
        before = single_fetches(apis)
        time.sleep(3)
        assert single_fetches(apis) - before <= 2
        check_group_read_all(stream, readers)
    finally:
        if quiet is not None:
            quiet.close()
        if stream is not None:
            stream.close()
        for reader in readers:
            reader.close()
        for b in brokers:
            b.stop()
    assert stream is not None
    check_replicas(brokers, "t", PARTITIONS, stream.records())
