"""What an idle cluster costs as its partitions grow: three brokers and a ZooKeeper node.

For each partition count: a ZooKeeper node and three ``python -m brokerd --zookeeper``
brokers on free loopback ports, topics of replication factor 3 holding that many partitions
(500 a topic), each broker leading a third and following the rest.  Once every partition
is in sync and 2 s have passed, each broker's CPU over ``--seconds`` (user + system, all
threads, from psutil), its RSS, and the replica requests it answered meanwhile
(``replica_fetch`` + ``replica_fetch_many`` from ``stats``).  Medians of ``--runs`` runs,
each on fresh servers; every process is stopped by its pid.

    apt-get install zookeeper
    python bench/cluster_idle.py                       # 30, 300, 1,500 partitions
    python bench/cluster_idle.py --partitions 300 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster.client import start_member, wait_in_sync  # noqa: E402
from tests.cluster.zookeeper import available, start_zookeeper  # noqa: E402
from tests.integration.wire import RawClient  # noqa: E402

PER_TOPIC = 500


def replica_requests(api: str) -> int:
    with RawClient(api) as raw:
        ops = raw.ok("stats")["stats"]["requests_by_op"]
    return int(ops.get("replica_fetch", 0) + ops.get("replica_fetch_many", 0))


def one_run(partitions: int, seconds: float) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="cluster-idle-") as tmp:
        folder = Path(tmp)
        zk = start_zookeeper(folder / "zk")
        brokers = []
        try:
            brokers = [start_member(folder, zk, i) for i in range(3)]
            apis = [b.api for b in brokers]
            sizes = [min(PER_TOPIC, partitions - start)
                     for start in range(0, partitions, PER_TOPIC)]
            with RawClient(apis[0]) as raw:
                for k, size in enumerate(sizes):
                    raw.ok("create_topic", topic=f"t{k}", partitions=size, timeout_s=60)
            for k, size in enumerate(sizes):
                wait_in_sync(apis, f"t{k}", size, 3, timeout=300)
            time.sleep(2.0)
            procs = [psutil.Process(b.pid) for b in brokers]
            cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
            req0 = [replica_requests(api) for api in apis]
            time.sleep(seconds)
            cpu = [(sum(p.cpu_times()[:2]) - c) / seconds * 100 for p, c in zip(procs, cpu0)]
            reqs = [(replica_requests(api) - r) / seconds for api, r in zip(apis, req0)]
            rss = [p.memory_info().rss / 1e6 for p in procs]
            return {"cpu_pct": cpu, "replica_requests_per_s": reqs, "rss_mb": rss}
        finally:
            for b in brokers:
                b.stop()
            zk.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partitions", default="30,300,1500")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    why = available()
    if why:
        print(f"cluster_idle: {why}")
        return 1
    print("| partitions (RF 3, 3 brokers) | idle CPU per broker | replica requests/s per "
          "broker | RSS MB |")
    print("| ---: | ---: | ---: | ---: |")
    for count in (int(x) for x in args.partitions.split(",")):
        runs = [one_run(count, args.seconds) for _ in range(args.runs)]
        cpu = statistics.median(statistics.median(r["cpu_pct"]) for r in runs)
        reqs = statistics.median(statistics.median(r["replica_requests_per_s"]) for r in runs)
        rss = statistics.median(statistics.median(r["rss_mb"]) for r in runs)
        print(f"| {count:,} | {cpu:.1f} % | {reqs:.0f} | {rss:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
