"""The console against a cluster of two brokers and a ZooKeeper: replicas and ISR per
partition, the message browser reading each partition from its leader, a partition
under-replicated once a broker is killed with kill -9, and dead letters listed, replayed
and purged when their partitions' leaders are different brokers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.client import Event
from runtime.dlq import dlq_name, parse_location, send_to_dlq
from runtime.producer import Producer
from tests.cluster.client import LeaderProducer, create_in_sync, start_member, wait_in_sync
from tests.cluster.zookeeper import ZooKeeper, available, start_zookeeper
from tests.console.browser import start_console
from tests.console.test_console_api import call
from tests.helpers import BrokerProcess, wait_for
from tests.integration.wire import RawClient, read_partition


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


def failure(i: int) -> ValueError:
    """An error raised and caught, as a handler's is: it has a traceback."""
    try:
        raise ValueError(f"order {i} is malformed")
    except ValueError as exc:
        return exc


def replayed_into_source(apis: list[str], leaders: dict[int, int]) -> dict[str, list[Any]]:
    """Every record of ``orders``, read from each partition's leader, by its
    ``rail.replayed-from`` header: {"orders.dlq[p]@o": [place, value, key, headers]}."""
    found: dict[str, list[Any]] = {}
    for partition, leader in leaders.items():
        with RawClient(apis[leader]) as raw:
            for offset, (value, key, headers, _) in read_partition(raw, "orders", partition):
                origin = (headers or {}).get("rail.replayed-from")
                found[origin] = [f"orders[{partition}]@{offset}", value, key, headers]
    return found


def test_dead_letters_led_by_both_brokers_are_listed_replayed_and_purged_through_one(
        cluster: tuple[ZooKeeper, list[BrokerProcess]], tmp_path: Path) -> None:
    _, brokers = cluster
    apis = [b.api for b in brokers]
    dlq = dlq_name("orders")
    source_leaders = create_in_sync(apis, "orders", partitions=2, replicas=2)
    leaders = create_in_sync(apis, dlq, partitions=2, replicas=2)
    assert set(leaders.values()) == {0, 1}  # the console's broker leads one partition only
    with Producer(",".join(apis)) as producer:  # the worker's way: to each leader
        for i in range(6):
            event = Event(topic="orders", partition=i % 2, offset=i, value={"order": i},
                          key=f"order-{i}", headers={"trace": f"t{i}"})
            send_to_dlq(producer, event, failure(i), attempts=3)
        producer.flush()
        assert not producer.errors, producer.errors[:3]
    proc, console = start_console(tmp_path, apis[0], "")
    try:
        status, listed = call(f"{console}/api/dlq")
        assert status == 200, listed
        assert listed["dlqs"] == [{"dlq": dlq, "source": "orders", "count": 6}]
        status, page = call(f"{console}/api/dlq/orders")
        assert status == 200, page
        letters = page["letters"]
        assert page["total"] == 6 and len(letters) == 6
        assert {x["partition"] for x in letters} == {0, 1}  # both leaders were read
        assert sorted(x["error"] for x in letters) == [
            f"ValueError: order {i} is malformed" for i in range(6)]
        assert all("raise ValueError" in x["stack"] and x["attempts"] == "3"
                   and x["source"] == "orders" and not x["replayed"] for x in letters)
        picks = [next(x for x in letters if x["partition"] == part) for part in (0, 1)]
        status, done = call(f"{console}/api/dlq/orders/replay", "POST",
                            {"picks": [[x["partition"], x["offset"]] for x in picks]})
        assert status == 200, done
        places = sorted(f"{dlq}[{x['partition']}]@{x['offset']}" for x in picks)
        assert sorted(done["replayed"]) == places and done["skipped"] == 0
        landed = replayed_into_source(apis, source_leaders)
        assert sorted(landed) == places  # the two picked, nothing else
        status, page = call(f"{console}/api/dlq/orders")
        assert status == 200, page
        replayed = {(x["partition"], x["offset"]): x for x in page["letters"] if x["replayed"]}
        assert sorted(replayed) == sorted((x["partition"], x["offset"]) for x in picks)
        for place, (to, value, key, headers) in landed.items():
            _, partition, offset = parse_location(place) or ("", -1, -1)
            letter = replayed[partition, offset]
            assert letter["replayed_to"] == to
            i = int(letter["source_offset"])
            assert (value, key, headers["trace"]) == ({"order": i}, f"order-{i}", f"t{i}")
            assert not any(h.startswith("rail.") and h != "rail.replayed-from" for h in headers)
        status, purged = call(f"{console}/api/dlq/orders/purge", "POST", {"confirm": "orders"})
        assert status == 200 and purged == {"purged": 6}, purged
        status, listed = call(f"{console}/api/dlq")
        assert status == 200 and listed["dlqs"][0]["count"] == 0, listed
        status, page = call(f"{console}/api/dlq/orders")
        assert status == 200 and page["total"] == 0 and page["letters"] == [], page
    finally:
        proc.stop()
