"""A rolling restart: each broker of three stopped (SIGTERM, as an upgrade does) and started
again in turn, under an ``acks="all"`` producer and a group of two members.  Nothing the
producer was told is stored may be lost, every record is consumed, no partition skips an
offset, the group's acknowledged offsets never go backwards, the replicas end identical;
and the group goes on reading within seconds of each stop.  It used not to: a member whose
sync commit was out at the stopped coordinator waited its whole request timeout (30 s
here) for a reply that could not come, as ZeroMQ does not tell a DEALER that its peer has
gone; the connection's monitor does, and the wait now ends there."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster.client import Stream, check_replicas, start_member, wait_in_sync
from tests.cluster.test_cluster_consumer import Reader
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import wait_for
from tests.integration.wire import RawClient

PARTITIONS = 4
RESUMED_WITHIN_S = 10.0  # the members' request timeout is 30 s


def test_a_rolling_restart_under_a_producer_and_a_group_loses_nothing_and_stalls_no_one(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    ports = [int(b.api.rsplit(":", 1)[1]) for b in brokers]
    apis = [b.api for b in brokers]
    stream: Stream | None = None
    readers: list[Reader] = []
    try:
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=PARTITIONS)
        wait_in_sync(apis, "t", PARTITIONS, 3)
        stream = Stream(apis, request_timeout_s=30)
        readers = [Reader(",".join(apis), timeout_s=30) for _ in range(2)]

        def consumed() -> int:
            return sum(sum(map(len, r.seen.values())) for r in readers)
        wait_for(lambda: consumed() >= 500, 60, what="500 events before the restarts")
        for i in range(3):
            at, stopped = consumed(), time.monotonic()
            assert brokers[i].stop() == 0
            wait_for(lambda: consumed() >= at + 300, 60, what="300 more events")
            took = time.monotonic() - stopped
            assert took < RESUMED_WITHIN_S, f"the group stalled {took:.1f} s after broker {i}"
            brokers[i] = start_member(tmp_path, zookeeper, i, api_port=ports[i])
            wait_in_sync(apis, "t", PARTITIONS, 3, timeout=60)
        stream.finish()
        check_group_read_all(stream, readers)
    finally:
        if stream is not None:
            stream.close()
        for reader in readers:
            reader.close()
        for b in brokers:
            b.stop()
    check_replicas(brokers, "t", PARTITIONS, stream.records())


def check_group_read_all(stream: Stream, readers: list[Reader]) -> None:
    """The group committed past every record ``stream`` was acknowledged, its members read
    each with its value and without an error, and their acknowledged offsets never went
    back."""
    ends = stream.ends()
    wait_for(lambda: all(any(r.acked[part] and r.acked[part][-1] >= end for r in readers)
                         for part, end in ends.items()), 90,
             what="the group to commit every record")
    for reader in readers:
        assert not reader.errors, reader.errors
    stored = {(part, offset): v for part, offset, v in stream.records()}
    got = {(part, offset): v for r in readers for part, rows in r.seen.items()
           for offset, v in rows}
    assert not set(stored) - set(got), sorted(set(stored) - set(got))[:5]
    assert all(got[k] == v for k, v in stored.items())
    for reader in readers:  # what the coordinators acknowledged never went back
        for part, offsets in reader.acked.items():
            assert offsets == sorted(offsets), (part, offsets)
