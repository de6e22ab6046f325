"""One stuck partition must not stall a producer's other partitions.

A broker leading one partition of a topic is stopped (SIGSTOP: its requests go unanswered,
as behind a partition or a leader waiting for its in-sync replicas), while one ``Producer``
sends keyed events to every partition.  The other partitions keep being acknowledged and
``send()`` never blocks; the stuck partition's events wait in the producer (as in Kafka's
record accumulator), and once the broker is continued every event is stored exactly once.  With ``linger_ms=0``
every send is a batch, and the stuck partition soon has ``max_in_flight`` of them; with a
linger, the batches that wait for it must not keep the others' partial batches from going.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from runtime.client import Producer
from runtime.dlq import read_all
from runtime.routing import Router
from tests.cluster.client import metadata, start_member
from tests.cluster.zookeeper import ZooKeeper
from tests.integration.wire import RawClient

STOPPED_S = 2.0


@pytest.mark.parametrize("linger_ms", [0, 5])
def test_a_stuck_partition_does_not_stall_the_others(tmp_path: Path, zookeeper: ZooKeeper,
                                                     linger_ms: int) -> None:
    brokers = [start_member(tmp_path, zookeeper, i) for i in range(3)]
    stopped = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=3, config={"replication_factor": 1})
        deadline = time.monotonic() + 30
        while True:
            meta = metadata(apis[0], "t")
            leaders = {i["partition"]: i["leader"] for i in meta["topics"][0]["partitions"]} \
                if meta else {}
            if len(leaders) == 3 and all(v >= 0 for v in leaders.values()):
                break
            assert time.monotonic() < deadline, f"no leaders: {leaders}"
            time.sleep(0.1)
        stuck = 0
        others = [p for p in leaders if leaders[p] != leaders[stuck]]
        assert others, f"every partition on one broker: {leaders}"
        acked: Counter[int] = Counter()
        sent: Counter[int] = Counter()

        def done(partition: int, _offset: int, error: object) -> None:
            if error is None:
                acked[partition] += 1

        with Producer(",".join(apis), acks=1, linger_ms=linger_ms) as producer:
            for i in range(300):  # warm: every partition's first batch acknowledged
                producer.send("t", i, partition=i % 3, callback=done)
            producer.flush(timeout_s=10)
            stopped = brokers[leaders[stuck]].proc.pid
            os.kill(stopped, signal.SIGSTOP)
            slowest, value = 0.0, 300
            until = time.monotonic() + STOPPED_S
            while time.monotonic() < until:
                for partition in range(3):
                    started = time.monotonic()
                    producer.send("t", value, partition=partition, callback=done)
                    slowest = max(slowest, time.monotonic() - started)
                    sent[partition] += 1
                    value += 1
                time.sleep(0.002)
            time.sleep(0.3)  # the last acks, taken by the linger thread
            during = {p: acked[p] - 100 for p in range(3)}
            os.kill(stopped, signal.SIGCONT)
            stopped = None
            producer.flush(timeout_s=30)
            assert not producer.errors, producer.errors[:3]
        assert slowest < 0.5, f"a send() blocked {slowest:.2f} s behind the stuck partition"
        for p in others:
            assert during[p] >= 0.9 * sent[p], (p, during, sent)
        assert during[stuck] == 0
        router = Router(",".join(apis))
        try:
            values = Counter(e.value for e in read_all(router, "t"))
        finally:
            router.close()
        assert len(values) == value and max(values.values()) == 1, "lost or stored twice"
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        for b in brokers:
            b.stop()
