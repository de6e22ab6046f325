"""The requests every client makes once per group or topic, against ``ping``, on three
loopback brokers and a ZooKeeper: ``find_coordinator`` (2,000 calls to each broker, a new
group name each) and ``create_topic`` with ``exist_ok`` of a topic that exists (the Python
producer's look-up of a topic, 2,000 calls to each broker); the median and p99 of each.

    .venv/bin/python bench/coordinator_bench.py

A broker answers both from its own view of the cluster, as it answers ``metadata``; before,
each call read ZooKeeper on the broker's loop (two reads; a failed transaction and a read),
and the loop served nobody meanwhile. Measured 2026-11-30 on the 2-core VM:
``find_coordinator`` 0.906 ms median and 5.03 ms p99 before, 0.165 ms and 0.257 ms after;
``create_topic`` 1.379 ms and 7.88 ms before, 0.184 ms and 0.277 ms after; a ping 0.14-0.16
ms and 0.22-0.26 ms.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import start_zookeeper
from tests.integration.wire import RawClient

CALLS = 2000


def timed(api: str, op: str, fields_of: Callable[[int], dict[str, Any]]) -> list[float]:
    out = []
    with RawClient(api) as raw:
        for i in range(CALLS):
            fields = fields_of(i)
            started = time.perf_counter()
            reply = raw.call(op, **fields)
            out.append(time.perf_counter() - started)
            assert reply["op"] == op, reply
    return out


def summary(name: str, times: list[float]) -> str:
    times = sorted(times)
    return (f"{name} x{len(times)}: median {statistics.median(times) * 1e3:.3f} ms, "
            f"p99 {times[int(len(times) * 0.99)] * 1e3:.3f} ms")


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="coordinator-bench-"))
    zk = start_zookeeper(folder / "zk")
    brokers = []
    try:
        brokers = start_three(folder, zk)
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:  # the first ask creates __rail_offsets
            while raw.call("find_coordinator", group="warm")["op"] != "find_coordinator":
                time.sleep(0.1)
            raw.ok("create_topic", topic="orders", partitions=3)
        time.sleep(2)  # every broker has seen its leaders
        print(summary("find_coordinator", [
            t for api in apis for t in timed(api, "find_coordinator", lambda i: {
                "group": f"g{i}"})]))
        print(summary("create_topic exist_ok", [
            t for api in apis for t in timed(api, "create_topic", lambda i: {
                "topic": "orders", "exist_ok": True})]))
        print(summary("ping", timed(apis[0], "ping", lambda i: {})))
    finally:
        for b in brokers:
            b.stop()
        zk.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
