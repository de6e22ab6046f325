"""A replicated log on three nodes: Rail's cluster against a NATS JetStream cluster.

    apt-get install zookeeper nats-server && pip install nats-py
    python bench/cluster_bench.py                 # 200,000 events, 3 runs (~3 min)
    python bench/cluster_bench.py --events 50000 --runs 1

The same job for both, on one machine, in one run: three server processes on free loopback
ports, one replicated log of replication factor 3, 100-byte events.

- Rail: a ZooKeeper node (Debian's package, its jars) and three ``python -m brokerd
  --zookeeper`` brokers; one topic of one partition, replication factor 3 (the default with
  three brokers), ``min_insync_replicas`` 2.  Produce: one ``Producer`` given the three
  endpoints, ``acks="all"`` (answered once every in-sync replica holds the batch), one
  ``send()`` per event, ``flush()`` inside the timing.  Consume: ``fetch`` from the leader,
  1 MiB at a time, until every event is read.
- NATS: three ``nats-server`` with JetStream and a cluster route between them; one stream of
  file storage with 3 replicas (acknowledged once a quorum holds the message).  Produce:
  nats-py's ``publish_async`` per event (at most 4,000 unacknowledged, its default), then
  ``publish_async_completed()`` inside the timing.  Consume: a pull consumer with
  ``AckPolicy.NONE`` fetching 1,000 at a time.

Both clients are Python (Rail's own, and nats-py, NATS's Python client), so this is what a
Python user gets from each; nats-py's per-message cost bounds the NATS figures well below what
nats-server does for Go clients.  Neither fsyncs per event (Rail's default ``fsync = "interval"``, JetStream's default sync
every two minutes): both rely on the replicas for durability, as each documents.  Every
client runs in a process of its own; medians over ``--runs`` runs, each on fresh servers.
Every process started is stopped by its pid; the script exits 1 if one is left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):  # spawned children inherit sys.path
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common import free_port, run_in_process, stop_popen
from tests.cluster.client import wait_in_sync
from tests.cluster.zookeeper import start_zookeeper
from tests.helpers import start_broker

PAYLOAD = b"x" * 100


# -- Rail ------------------------------------------------------------------------------
def rail_produce(bootstrap: str, events: int) -> dict[str, Any]:
    from runtime.client import Producer
    with Producer(bootstrap, acks="all") as producer:
        producer.partitions_for("bench")
        started = time.perf_counter()
        for _ in range(events):
            producer.send("bench", PAYLOAD)
        producer.flush()
        seconds = time.perf_counter() - started
        errors = len(producer.errors)
    return {"rate": events / seconds, "errors": errors}


def rail_consume(leader: str, events: int) -> dict[str, Any]:
    import msgspec

    from brokerd import protocol as p
    from runtime.connection import Connection
    decode = msgspec.msgpack.Decoder(list[list[Any]]).decode  # every record, as a client would
    conn = Connection(leader, timeout_s=30)
    offset = 0
    started = time.perf_counter()
    while offset < events:
        reply = conn.call(p.Fetch(topic="bench", partition=0, offset=offset,
                                  max_bytes=1 << 20, max_wait_ms=500))
        for base, _ts, raw in reply.batches:
            records = decode(raw)
            offset = max(offset, base + len(records))
    seconds = time.perf_counter() - started
    conn.close()
    return {"rate": events / seconds}


def run_rail(folder: Path, events: int) -> dict[str, Any]:
    zk = start_zookeeper(folder / "zk", nodes=1)
    brokers = []
    try:
        for i in range(3):
            brokers.append(start_broker(folder / f"b{i}", "--broker-id", str(i),
                                        "--zookeeper", zk.hosts, timeout=30.0))
        apis = [b.api for b in brokers]
        from tests.integration.wire import RawClient
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="bench", partitions=1,
                   config={"min_insync_replicas": 2})
        leader = apis[wait_in_sync(apis, "bench", 1, 3)[0]]
        produced = run_in_process(rail_produce, ",".join(apis), events)
        consumed = run_in_process(rail_consume, leader, events)
        return {"produce": produced["rate"], "consume": consumed["rate"],
                "errors": produced["errors"]}
    finally:
        for b in brokers:
            b.stop()
        zk.stop()


# -- NATS JetStream ---------------------------------------------------------------------
def nats_produce(servers: list[str], events: int) -> dict[str, Any]:
    async def main() -> float:
        import nats
        nc = await nats.connect(servers=servers)
        js = nc.jetstream()
        started = time.perf_counter()
        for _ in range(events):
            await js.publish_async("bench", PAYLOAD)
        await js.publish_async_completed()
        seconds = time.perf_counter() - started
        await nc.close()
        return events / seconds
    return {"rate": asyncio.run(main())}


def nats_consume(servers: list[str], events: int) -> dict[str, Any]:
    async def main() -> float:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig
        nc = await nats.connect(servers=servers)
        js = nc.jetstream()
        sub = await js.pull_subscribe("bench", durable="reader",
                                      config=ConsumerConfig(ack_policy=AckPolicy.NONE))
        got = 0
        started = time.perf_counter()
        while got < events:
            got += len(await sub.fetch(1000, timeout=10))
        seconds = time.perf_counter() - started
        await nc.close()
        return events / seconds
    return {"rate": asyncio.run(main())}


def run_nats(folder: Path, events: int) -> dict[str, Any]:
    clients = [free_port() for _ in range(3)]
    routes = [free_port() for _ in range(3)]
    procs = []
    try:
        for i in range(3):
            node = folder / f"n{i}"
            node.mkdir(parents=True)
            others = ", ".join(f"nats-route://127.0.0.1:{r}" for j, r in enumerate(routes) if j != i)
            (node / "nats.conf").write_text(
                f'server_name: n{i}\nlisten: 127.0.0.1:{clients[i]}\n'
                f'jetstream {{ store_dir: "{node / "js"}" }}\n'
                f'cluster {{ name: bench, listen: 127.0.0.1:{routes[i]}, routes: [{others}] }}\n')
            procs.append(subprocess.Popen(["nats-server", "-c", str(node / "nats.conf")],
                                          stdout=subprocess.DEVNULL,
                                          stderr=open(node / "out.log", "w")))
        servers = [f"nats://127.0.0.1:{port}" for port in clients]
        asyncio.run(_add_stream(servers))
        produced = run_in_process(nats_produce, servers, events)
        consumed = run_in_process(nats_consume, servers, events)
        return {"produce": produced["rate"], "consume": consumed["rate"], "errors": 0}
    finally:
        for proc in procs:
            stop_popen(proc)


async def _quiet(exc: Exception) -> None:
    """nats-py prints every refused connection while the servers start: those are expected."""


async def _add_stream(servers: list[str]) -> None:
    """Create the R3 stream once the JetStream cluster has elected its meta leader."""
    import nats
    from nats.js.api import StorageType, StreamConfig
    deadline = time.monotonic() + 60
    while True:
        try:
            nc = await nats.connect(servers=servers, connect_timeout=2,
                                    error_cb=_quiet, allow_reconnect=False)
            try:
                await nc.jetstream().add_stream(StreamConfig(
                    name="BENCH", subjects=["bench"], num_replicas=3, storage=StorageType.FILE))
                return
            finally:
                await nc.close()
        except Exception:  # not ready yet (no meta leader, no route)
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


# -- the run ----------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" /
                                          f"cluster-{time.strftime('%Y%m%d-%H%M')}.json"))
    args = ap.parse_args()
    for tool in ("nats-server", "java"):
        if shutil.which(tool) is None:
            print(f"cluster_bench: needs {tool} (apt-get install nats-server zookeeper)")
            return 2
    rows: dict[str, list[dict[str, Any]]] = {"rail": [], "nats": []}
    for run in range(args.runs):
        for name, fn in (("rail", run_rail), ("nats", run_nats)):
            with tempfile.TemporaryDirectory(prefix=f"cluster-bench-{name}-") as folder:
                row = fn(Path(folder), args.events)
            rows[name].append(row)
            print(f"run {run + 1} {name}: produce {row['produce']:,.0f}/s, "
                  f"consume {row['consume']:,.0f}/s", flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("produce", "consume")}
           for name, rs in rows.items()}
    print(f"\n{args.events:,} events of 100 B, replication factor 3, medians of {args.runs}:")
    print("| | Rail | NATS JetStream | Rail / NATS |\n| --- | ---: | ---: | ---: |")
    for k in ("produce", "consume"):
        print(f"| {k} (events/s) | {med['rail'][k]:,.0f} | {med['nats'][k]:,.0f} | "
              f"{med['rail'][k] / med['nats'][k]:.2f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"events": args.events, "runs": rows,
                                           "medians": med}, indent=1))
    left = subprocess.run(["pgrep", "-f", "cluster-bench-"], capture_output=True, text=True, check=False)
    if left.stdout.strip() and str(os.getpid()) not in left.stdout.split():
        print(f"left running: {left.stdout.split()}")
        return 1
    return 1 if any(r["errors"] for r in rows["rail"]) else 0


if __name__ == "__main__":
    sys.exit(main())
