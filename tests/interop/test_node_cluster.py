"""examples/node in a cluster: the Node producer, given the brokers with ``--brokers``, sends
each partition's batches to its leader and follows the leaders through a kill -9, with the
same producer id and sequences: every event acknowledged, each stored once in every replica.

A real ZooKeeper (tests/cluster's fixture) and three real brokers on loopback.
"""

from __future__ import annotations

import re
import subprocess
import zlib
from pathlib import Path

import msgspec

from tests.cluster.client import metadata, read_log, start_member, wait_in_sync
from tests.cluster.conftest import zookeeper  # noqa: F401 - the fixture
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import wait_for
from tests.integration.wire import RawClient
from tests.interop import describe_run, run

TOPIC = "node.cluster"
PARTITIONS = 4
EVENTS = 4000


def test_the_node_producer_follows_the_leaders_through_a_kill_9_and_loses_nothing(
        tmp_path: Path, zookeeper: ZooKeeper, node_example: Path) -> None:  # noqa: F811
    brokers = start_three(tmp_path, zookeeper)
    ports = [int(b.api.rsplit(":", 1)[1]) for b in brokers]
    producer: subprocess.Popen[str] | None = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[1]) as raw:
            raw.ok("create_topic", topic=TOPIC, partitions=PARTITIONS)
        leaders = wait_in_sync(apis, TOPIC, PARTITIONS, 3)
        victim = leaders[0]
        script = str(node_example / "producer.js")

        # A topic the cluster does not hold: a clear error, nothing created.
        missing = run(["node", script, "--brokers", ",".join(apis), "--topic", "node.nope",
                       "--count", "5"])
        assert missing.returncode == 1, describe_run(missing)
        assert "UNKNOWN_TOPIC" in missing.stderr and "create it first" in missing.stderr

        # Bootstrap from one broker that is not the victim: the rest come from metadata.
        first = next(api for i, api in enumerate(apis) if i != victim)
        producer = subprocess.Popen(
            ["node", script, "--brokers", first, "--topic", TOPIC, "--count", str(EVENTS),
             "--batch", "10", "--in-flight", "4", "--acks", "all", "--timeout", "3000",
             "--delivery-timeout", "40000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def partition0_end() -> int:
            meta = metadata(apis[victim], TOPIC)
            return meta["topics"][0]["partitions"][0]["end_offset"] if meta else 0
        wait_for(lambda: partition0_end() >= EVENTS // PARTITIONS // 5, timeout=20,
                 interval=0.01, what="the producer a fifth of the way through partition 0")
        assert producer.poll() is None, "the producer finished before the kill"
        brokers[victim].kill9()

        out, err = producer.communicate(timeout=50)
        assert producer.returncode == 0, f"exit {producer.returncode}\n{out}\n{err}"
        assert f"sent {EVENTS} events to {TOPIC}, every one acknowledged" in out, out
        # It met the kill: at least one batch went again, to the new leader.
        assert "batches resent" in err, err
        moved = metadata(first, TOPIC)
        assert moved is not None
        assert moved["topics"][0]["partitions"][0]["leader"] not in (-1, victim)

        brokers[victim] = start_member(tmp_path, zookeeper, victim, api_port=ports[victim])
        wait_in_sync([b.api for b in brokers], TOPIC, PARTITIONS, 3, timeout=30)
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait(5)
        for b in brokers:
            b.stop()

    # Every replica identical, record by record, offsets dense from 0 (the history check of
    # tests/cluster, whose duplicate check needs hashable values: these are maps); then each
    # event exactly once, on the partition its key hashes to, at the offsets the producer
    # reported.
    logs = {i: {p: read_log(b.data_dir, TOPIC, p) for p in range(PARTITIONS)}
            for i, b in enumerate(brokers)}
    for partition in range(PARTITIONS):
        copies = [logs[i][partition] for i in logs]
        assert all(copy == copies[0] for copy in copies), f"replicas of {partition} diverge"
        assert [o for o, _ in copies[0]] == list(range(len(copies[0]))), "offsets not dense"
    seen: dict[int, int] = {}
    for partition, records in logs[0].items():
        for _offset, raw in records:
            value, key, *_ = msgspec.msgpack.decode(raw)
            assert key == f"node-{value['n']}"
            assert partition == zlib.crc32(key.encode()) % PARTITIONS, key
            assert value["n"] not in seen, f"event {value['n']} stored twice"
            seen[value["n"]] = partition
    assert sorted(seen) == list(range(1, EVENTS + 1))
    reported = {int(p): (int(a), int(b))
                for p, a, b in re.findall(r"partition (\d+): offsets (\d+)-(\d+)", out)}
    for partition, records in logs[0].items():
        offsets = [o for o, _ in records]
        assert reported[partition] == (offsets[0], offsets[-1]), (partition, reported)
