"""The console against a cluster of two brokers and a ZooKeeper: replicas and ISR per
partition, the message browser reading each partition from its leader, and a partition
under-replicated once a broker is killed with kill -9."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.client import LeaderProducer, start_member, wait_in_sync
from tests.cluster.zookeeper import ZooKeeper, available, start_zookeeper
from tests.console.browser import start_console
from tests.console.test_console_api import call
from tests.helpers import BrokerProcess, wait_for
from tests.integration.wire import RawClient


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ZooKeeper, list[BrokerProcess]]]:
    why = available()
    if why:
        pytest.skip(why)
    zk = start_zookeeper(tmp_path / "zk")
    brokers: list[BrokerProcess] = []
    config = tmp_path / "broker.toml"
    config.write_text("replica_lag_time_ms = 1000\n")
    try:
        for i in range(2):
            brokers.append(start_member(tmp_path, zk, i, "--config", str(config)))
        yield zk, brokers
    finally:
        for b in brokers:
            b.stop()
        zk.stop()


def partitions(console: str) -> list[dict[str, Any]]:
    status, topic = call(f"{console}/api/topics/t")
    assert status == 200, topic
    return topic["partition_list"]


def test_console_shows_replicas_isr_and_reads_each_partition_from_its_leader(
        cluster: tuple[ZooKeeper, list[BrokerProcess]], tmp_path: Path) -> None:
    _, brokers = cluster
    apis = [b.api for b in brokers]
    with RawClient(apis[0]) as raw:
        raw.ok("create_topic", topic="t", partitions=2)
    leaders = wait_in_sync(apis, "t", 2, 2)
    assert set(leaders.values()) == {0, 1}  # one partition led by each broker
    producer = LeaderProducer(apis, "t", producer_id=9)
    for i in range(10):
        producer.send(i % 2, [f"v{i}"])
    producer.close()
    proc, console = start_console(tmp_path, apis[0], "")
    try:
        assert all(len(x["replicas"]) == 2 and len(x["isr"]) == 2 for x in partitions(console))
        status, page = call(f"{console}/api/topics/t/messages?from=start&limit=100")
        assert status == 200, page
        assert sorted(m["value"]["text"] for m in page["messages"]) == sorted(
            f"v{i}" for i in range(10))
        brokers[1].kill9()
        wait_for(lambda: any(len(x["isr"]) < len(x["replicas"]) for x in partitions(console)),
                 30, 0.2, "an under-replicated partition on the console")
        _, listed = call(f"{console}/api/topics")
        assert listed["clustered"] and listed["topics"][0]["under_replicated"] >= 1
    finally:
        proc.stop()
    # Given the cluster's endpoint list, the dead broker first: it serves the same.
    (tmp_path / "listed").mkdir()
    proc, console = start_console(tmp_path / "listed", f"{apis[1]},{apis[0]}", "")
    try:
        assert any(len(x["isr"]) < len(x["replicas"]) for x in partitions(console))
        status, page = call(f"{console}/api/topics/t/messages?from=start&limit=100")
        assert status == 200, page
        assert sorted(m["value"]["text"] for m in page["messages"]) == sorted(
            f"v{i}" for i in range(10))
    finally:
        proc.stop()
