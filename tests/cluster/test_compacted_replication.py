"""A compacted topic in a cluster: a follower that comes back after its leader's cleaner
dropped records catches up across the gaps in offsets, keeps them through a kill -9, and
can lead with every key's latest value.

Before, its first fetch answered a batch past its log end ("a replicated batch starts at
295, the log ends at 0"), which it refused for ever: a compacted partition (the groups'
``__rail_offsets``, a streams changelog, ``_connect-offsets``) could never again have that
replica in sync, nor gain a new one by reassignment.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec

from tests.cluster.client import create_in_sync, read_log, start_member, wait_in_sync
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import wait_for
from tests.integration.wire import RawClient

KEYS = 5
COUNT = 300


def _first_base(api: str) -> int:
    with RawClient(api) as raw:
        reply = raw.ok("fetch", topic="c", partition=0, offset=0, max_bytes=1 << 20)
    return reply["batches"][0][0] if reply["batches"] else -1


def _latest(api: str) -> dict[str, tuple[int, Any]]:
    """Each key's latest (offset, value), as a consumer of ``api`` reads them."""
    out: dict[str, tuple[int, Any]] = {}
    offset = 0
    with RawClient(api) as raw:
        while True:
            reply = raw.ok("fetch", topic="c", partition=0, offset=offset, max_bytes=1 << 20)
            if not reply["batches"]:
                return out
            for base, _, records in reply["batches"]:
                for i, record in enumerate(records):
                    if base + i >= offset:
                        out[record[1]] = (base + i, record[0])
                offset = base + len(records)


def _leader_of(apis: list[str]) -> str | None:
    for api in apis:
        try:
            with RawClient(api) as raw:
                meta = raw.call("metadata", timeout_s=2.0, topics=["c"])
        except AssertionError:
            continue
        if meta.get("op") != "metadata":
            continue
        by_id = {b["id"]: b["api"] for b in meta["brokers"]}
        leader = by_id.get(meta["topics"][0]["partitions"][0]["leader"])
        if leader == api:
            return api
    return None


def test_a_follower_back_after_compaction_catches_up_survives_kill_9_and_leads(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper,
                          "retention_check_ms = 300\nreplica_lag_time_ms = 1500\n")
    config = tmp_path / "broker.toml"  # start_three wrote it: a restart takes it again
    try:
        apis = [b.api for b in brokers]
        port = int(apis[2].rsplit(":", 1)[1])
        create_in_sync(apis, "c", 1, 3,
                       config={"cleanup_policy": "compact", "segment_bytes": 1024})
        brokers[2].stop()
        history = {}
        with RawClient(apis[0]) as raw:
            for i in range(COUNT):
                record = [{"n": i, "pad": "x" * 30}, f"k{i % KEYS}"]
                reply = raw.ok("produce", topic="c", partition=0, acks="all",
                               records=msgspec.Raw(msgspec.msgpack.encode([record])))
                history[reply["offsets"][0][1]] = record
        wait_for(lambda: _first_base(apis[0]) > 0, timeout=20, interval=0.2,
                 what="the leader's cleaner to drop the first records")
        want = {f"k{k}": (COUNT - KEYS + k, {"n": COUNT - KEYS + k, "pad": "x" * 30})
                for k in range(KEYS)}
        for _ in range(2):  # back after the compaction; then again after a kill -9
            brokers[2] = start_member(tmp_path, zookeeper, 2, "--config", str(config),
                                      api_port=port)
            wait_in_sync(apis, "c", 1, 3)
            brokers[2].kill9()
        brokers[2] = start_member(tmp_path, zookeeper, 2, "--config", str(config),
                                  api_port=port)
        wait_in_sync(apis, "c", 1, 3)
        assert "dropped" not in brokers[2].log(), "recovery cut the copied gaps"
        brokers[0].stop()
        brokers[1].stop()
        wait_for(lambda: _latest(apis[2]) == want, timeout=30, interval=0.2,
                 what="broker 2 to lead with every key's latest value")
    finally:
        for b in brokers:
            b.stop()
    for b in brokers:  # every record each copy kept is the one produced at its offset
        for offset, raw in read_log(b.data_dir, "c", 0):
            assert msgspec.msgpack.decode(raw) == history[offset], (b.data_dir, offset)


def test_the_cleaner_keeps_an_acknowledged_value_whose_newer_one_is_not_replicated(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """Key ``k`` is acknowledged by every replica (acks "all"); with both followers paused
    the leader takes a newer ``k`` (acks 1, above the high watermark) and cleans.  Killed,
    it loses that newer value to the next leader's log, as an unreplicated write may be;
    the acknowledged one must still be in its copy when it comes back, as in the others'.
    Kafka's cleaner stops at the high watermark for this; Rail's cleaned up to the log
    end, and the old leader came back without ``k`` at all."""
    brokers = start_three(tmp_path, zookeeper,
                          "retention_check_ms = 300\nreplica_lag_time_ms = 60000\n")
    config = tmp_path / "broker.toml"  # start_three wrote it: a restart takes it again
    try:
        apis = [b.api for b in brokers]
        ports = [int(a.rsplit(":", 1)[1]) for a in apis]
        assert create_in_sync(apis, "c", 1, 3, config={
            "cleanup_policy": "compact", "segment_bytes": 1024}) == {0: 0}

        def produce(raw: RawClient, key: str, n: int, acks: Any) -> int:
            record = [{"n": n, "pad": "x" * 30}, key]
            reply = raw.ok("produce", topic="c", partition=0, acks=acks,
                           records=msgspec.Raw(msgspec.msgpack.encode([record])))
            return int(reply["offsets"][0][1])

        with RawClient(apis[0]) as raw:
            acked = produce(raw, "k", 0, "all")
            for i in range(40):  # rolls the segment that holds k
                produce(raw, f"other-{i % 4}", i, "all")
            for b in brokers[1:]:
                os.kill(b.pid, signal.SIGSTOP)
            try:
                # The followers' fetches parked at the leader are answered with this first
                # record (the paused processes read it when they are continued); the next
                # ones reach no follower before the leader's kill.
                produce(raw, "first", 0, 1)
                produce(raw, "k", 1, 1)  # above the high watermark
                for i in range(40):
                    produce(raw, f"late-{i % 4}", i, 1)
                time.sleep(1.0)  # the leader's cleaner runs every 0.3 s
                brokers[0].kill9()
            finally:
                for b in brokers[1:]:
                    os.kill(b.pid, signal.SIGCONT)
        live = apis[1:]
        wait_for(lambda: _leader_of(live) in live, timeout=30, interval=0.2,
                 what="a new leader")
        brokers[0] = start_member(tmp_path, zookeeper, 0, "--config", str(config),
                                  api_port=ports[0])
        wait_in_sync(apis, "c", 1, 3)
    finally:
        for b in brokers:
            b.stop()
    for b in brokers:
        values = {msgspec.msgpack.decode(r)[1]: (o, msgspec.msgpack.decode(r)[0]["n"])
                  for o, r in read_log(b.data_dir, "c", 0)}
        assert values.get("k") == (acked, 0), (b.data_dir.name, values.get("k"))
