"""A compacted topic in a cluster: a follower that comes back after its leader's cleaner
dropped records catches up across the gaps in offsets, keeps them through a kill -9, and
can lead with every key's latest value.

Before, its first fetch answered a batch past its log end ("a replicated batch starts at
295, the log ends at 0"), which it refused for ever: a compacted partition (the groups'
``__rail_offsets``, a streams changelog, ``_connect-offsets``) could never again have that
replica in sync, nor gain a new one by reassignment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from tests.cluster.client import create_in_sync, read_log, start_member, wait_in_sync
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import BrokerProcess, wait_for
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


def test_a_follower_back_after_compaction_catches_up_survives_kill_9_and_leads(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    config = tmp_path / "broker.toml"
    config.write_text("retention_check_ms = 300\nreplica_lag_time_ms = 1500\n")
    brokers: list[BrokerProcess] = []
    try:
        for i in range(3):
            brokers.append(start_member(tmp_path, zookeeper, i, "--config", str(config)))
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
