"""examples/node in a cluster, given its brokers with ``--brokers``: the Node producer sends
each partition's batches to its leader and follows the leaders through a kill -9 with the
same producer id and sequences (every event acknowledged, each stored once in every
replica); the Node worker joins at its group's coordinator, fetches from the leaders and
follows both through a kill -9 of the coordinator (every event handled, none skipped,
everything committed).

A real ZooKeeper (tests/cluster's fixture) and three real brokers on loopback per test.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import msgspec

from brokerd import protocol as pr
from runtime.client import BrokerError, Producer
from runtime.routing import Router
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

        # One broker of a cluster given as --broker: refused as not its leader, with a hint.
        # (Event 1 alone, to a broker that does not lead its partition: nothing is stored.)
        other = next(i for i in range(3) if i != leaders[zlib.crc32(b"node-1") % PARTITIONS])
        single = run(["node", script, "--broker", apis[other], "--topic", TOPIC, "--count", "1"])
        assert single.returncode == 1, describe_run(single)
        assert "NOT_LEADER" in single.stderr and "give --brokers" in single.stderr

        # Bootstrap from one broker that is not the victim: the rest come from metadata.
        first = next(api for i, api in enumerate(apis) if i != victim)
        producer = subprocess.Popen(
            ["node", script, "--brokers", first, "--topic", TOPIC, "--count", str(EVENTS),
             "--batch", "10", "--in-flight", "4", "--acks", "all", "--timeout", "3000",
             "--rate", "1000",
             "--delivery-timeout", "40000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def partition0_end() -> int:
            meta = metadata(apis[victim], TOPIC)
            return meta["topics"][0]["partitions"][0]["end_offset"] if meta else 0
        # --rate 1000: four seconds of events at least; the kill comes a fifth of the way.
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


GROUP = "node-cluster"


def test_the_node_worker_follows_its_coordinator_and_leaders_through_a_kill_9(
        tmp_path: Path, zookeeper: ZooKeeper, node_example: Path) -> None:  # noqa: F811
    """A steady keyed stream (the Python Producer, acks=all) is consumed by the Node worker
    with --brokers; the broker that coordinates its group (and leads partitions) is killed
    with kill -9 mid-way. The worker finds the new coordinator, rejoins, reads again from
    the committed offsets at the new leaders: every acknowledged event handled, no offset
    skipped, and after SIGTERM every partition committed to its end."""
    brokers = start_three(tmp_path, zookeeper)
    apis = [b.api for b in brokers]
    stop = threading.Event()
    acked: list[int] = []
    failed: list[BrokerError] = []
    handled: list[dict[str, Any]] = []
    worker: subprocess.Popen[str] | None = None
    sender: threading.Thread | None = None
    reader: threading.Thread | None = None
    try:
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic=TOPIC, partitions=PARTITIONS)
        leaders = wait_in_sync(apis, TOPIC, PARTITIONS, 3)

        def coordinator() -> str | None:
            with RawClient(apis[0]) as raw:
                reply = raw.call("find_coordinator", group=GROUP)
            return reply["api"] if reply["op"] == "find_coordinator" else None
        victim = apis.index(wait_for(coordinator, timeout=20, interval=0.2,
                                     what="the group's coordinator"))
        assert victim in leaders.values(), "the coordinator leads a partition too"
        wait_in_sync(apis, "__rail_offsets", 8, 3)

        def send_steadily() -> None:
            with Producer(",".join(apis), acks="all", request_timeout_s=30) as producer:
                n = 0
                while not stop.is_set():
                    def done(_part: int, _offset: int, error: BrokerError | None,
                             n: int = n) -> None:
                        (acked.append(n) if error is None else failed.append(error))
                    producer.send(TOPIC, {"n": n}, key=f"k{n}", callback=done)
                    n += 1
                    if n % 20 == 0:
                        time.sleep(0.02)  # ~1,000 events a second
                producer.flush(timeout_s=40)
        sender = threading.Thread(target=send_steadily, daemon=True)
        sender.start()

        # One broker given as --broker: it answers `poll` (as coordinator) or `join` (as
        # another broker) with an error the worker explains.
        for api in apis:
            alone = run(["node", str(node_example / "worker.js"), "--broker", api, "--group",
                         GROUP, "--topics", TOPIC, "--count", "1", "--timeout-ms", "5000"])
            assert alone.returncode == 1, describe_run(alone)
            assert "give --brokers" in alone.stderr, describe_run(alone)

        first = next(api for i, api in enumerate(apis) if i != victim)
        worker = subprocess.Popen(
            ["node", str(node_example / "worker.js"), "--brokers", first, "--group", GROUP,
             "--topics", TOPIC, "--client-id", "node-cluster-test"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def read_events(stream: Any) -> None:
            for line in stream:
                handled.append(json.loads(line))
        reader = threading.Thread(target=read_events, args=(worker.stdout,), daemon=True)
        reader.start()

        wait_for(lambda: len(handled) >= 500, timeout=20, what="500 events before the kill")
        brokers[victim].kill9()
        at_kill = len(handled)
        wait_for(lambda: len(handled) >= at_kill + 1000, timeout=30,
                 what="1,000 events handled after the kill")
        stop.set()
        sender.join(45)
        assert not sender.is_alive() and not failed, failed[:3]

        def every_acked_handled() -> bool:
            return set(acked) <= {e["value"]["n"] for e in list(handled)}
        wait_for(every_acked_handled, timeout=20, what="every acknowledged event handled")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
        reader.join(5)
        assert worker.returncode == 0, f"exit {worker.returncode}\n{err}"
        assert "joining again" in err, err  # it met the kill

        # No offset skipped: each partition's handled offsets cover its log (duplicates
        # allowed: at least once); every partition committed to its end, by the new
        # coordinator.
        live = [api for i, api in enumerate(apis) if i != victim]
        router = Router(",".join(live))
        try:
            ends = {p.partition: p.end_offset
                    for p in router.call(pr.Metadata(topics=[TOPIC])).topics[0].partitions}
            described = router.call(pr.DescribeGroup(group=GROUP))
        finally:
            router.close()
        for partition, end in ends.items():
            seen = {e["offset"] for e in handled if e["partition"] == partition}
            assert seen == set(range(end)), f"partition {partition}: offsets skipped"
        assert {(gp.partition, gp.committed) for gp in described.partitions} \
            == set(ends.items())
        assert described.members == [], "the worker left its group"
    finally:
        stop.set()
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(5)
        if sender is not None:
            sender.join(45)
        for b in brokers:
            b.stop()
