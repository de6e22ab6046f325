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

from common import free_port, run_in_process, spawn, stop_popen
from tests.cluster.client import wait_in_sync
from tests.cluster.zookeeper import start_zookeeper
from tests.helpers import start_broker

PAYLOAD = b"x" * 100
LATENCY_EVENTS, LATENCY_RATE = 25_000, 5_000.0  # 5 s at the 5,000 events/s
FAILOVER_S = 16.0  # a steady stream this long; the leader is killed a quarter in
SESSION_TIMEOUT_S = 6.0  # the brokers' ZooKeeper session (brokerd's default)


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


def rail_latency_consume(bootstrap: str, count: int, ready: str) -> dict[str, Any]:
    """A group member (the cluster ``Consumer``) reading ``count`` events whose values are
    their send times: produce-to-consume latency of each."""
    from common import latency_summary_ms

    from runtime.client import Consumer
    latencies: list[int] = []
    with Consumer(bootstrap, group="latency", topics=["bench"], start="latest") as consumer:
        deadline = time.monotonic() + 30
        # parked at the leader (a single broker's Consumer parks in its first poll)
        while not (consumer.assignment and getattr(consumer, "_fetching", True)):
            consumer.poll(0.05)
            if time.monotonic() > deadline:
                raise TimeoutError("no assignment")
        Path(ready).touch()
        while len(latencies) < count:
            for event in consumer.poll(1.0):
                latencies.append(time.time_ns() - event.value)
    return latency_summary_ms(latencies)


def rail_latency_produce(bootstrap: str, count: int, rate: float) -> dict[str, Any]:
    """``count`` events at ``rate`` a second, each sent at once (``linger_ms=0``).  It
    sleeps until each is due, as a producer at that rate would: a busy wait would hold one
    of the machine's two cores for the whole measurement."""
    from runtime.client import Producer
    with Producer(bootstrap, acks="all", linger_ms=0) as producer:
        due = time.perf_counter()
        for _ in range(count):
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            producer.send("bench", time.time_ns())
            due += 1 / rate
        producer.flush()
        return {"errors": len(producer.errors)}


def rail_steady_produce(bootstrap: str, seconds: float, rate: float) -> dict[str, Any]:
    """``acks="all"`` sends at ``rate`` a second for ``seconds``: (sent, acked) times."""
    from runtime.client import Producer
    acked: list[tuple[float, float]] = []
    failed: list[str] = []

    def note(sent: float) -> Any:
        def done(_partition: int, _offset: int, error: Any) -> None:
            (failed.append(error.code) if error else acked.append((sent, time.time())))
        return done
    with Producer(bootstrap, acks="all", linger_ms=0, request_timeout_s=5) as producer:
        end = time.perf_counter() + seconds
        due = time.perf_counter()
        while time.perf_counter() < end:
            producer.send("bench", PAYLOAD, callback=note(time.time()))
            due += 1 / rate
            time.sleep(max(0.0, due - time.perf_counter()))
        producer.flush(timeout_s=60)
    return {"acked": acked, "failed": failed}


def run_single(folder: Path, events: int) -> dict[str, Any]:
    """The same produce and the same latency run against one broker without ZooKeeper:
    what replication costs, and the floor of the latency on this machine."""
    broker = start_broker(folder / "single")
    try:
        from tests.integration.wire import RawClient
        with RawClient(broker.api) as raw:
            raw.ok("create_topic", topic="bench", partitions=1)
        produced = run_in_process(rail_produce, broker.api, events)["rate"]
        latency = measure_latency(folder, broker.api)
        return {"produce": produced, "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
                "errors": latency["errors"]}
    finally:
        broker.stop()


def measure_latency(folder: Path, bootstrap: str) -> dict[str, Any]:
    """Produce -> consume latency at LATENCY_RATE through a group ``Consumer``."""
    ready = folder / "consumer-ready"
    with spawn(rail_latency_consume, bootstrap, LATENCY_EVENTS, str(ready)) as reader:
        deadline = time.monotonic() + 60
        while not ready.exists():
            reader.ensure_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("the latency consumer never got its partition")
            time.sleep(0.05)
        errors = run_in_process(rail_latency_produce, bootstrap, LATENCY_EVENTS,
                                LATENCY_RATE)["errors"]
        return {**reader.result(120), "errors": errors}


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
        # produce -> consume latency at 5,000 events/s through the cluster consumer
        latency = measure_latency(folder, ",".join(apis))
        # failover: kill -9 the leader under a steady acks=all stream; then the first ack of
        # an event sent after the kill (the old leader can answer none of those)
        with spawn(rail_steady_produce, ",".join(apis), FAILOVER_S, 2_000.0) as steady:
            time.sleep(FAILOVER_S / 4)
            killed_at = time.time()
            brokers[[b.api for b in brokers].index(leader)].kill9()
            stream = steady.result(FAILOVER_S + 90)
        after = [acked for sent, acked in stream["acked"] if sent > killed_at]
        return {"produce": produced["rate"], "consume": consumed["rate"],
                "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
                "failover_s": (min(after) - killed_at) if after else float("inf"),
                "errors": produced["errors"] + latency["errors"] + len(stream["failed"])}
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
    rows: dict[str, list[dict[str, Any]]] = {"rail": [], "nats": [], "single": []}
    for run in range(args.runs):
        for name, fn in (("rail", run_rail), ("nats", run_nats), ("single", run_single)):
            with tempfile.TemporaryDirectory(prefix=f"cluster-bench-{name}-") as folder:
                row = fn(Path(folder), args.events)
            rows[name].append(row)
            print(f"run {run + 1} {name}: " + ", ".join(
                f"{k} {v:,.0f}/s" if k in ("produce", "consume") else f"{k} {v:.3g}"
                for k, v in row.items() if k != "errors"), flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "errors"}
           for name, rs in rows.items()}
    rail, nats, single = med["rail"], med["nats"], med["single"]
    print(f"\n{args.events:,} events of 100 B, replication factor 3, medians of {args.runs}:")
    print("| | Rail | NATS JetStream | Rail / NATS |\n| --- | ---: | ---: | ---: |")
    for k in ("produce", "consume"):
        print(f"| {k} (events/s) | {rail[k]:,.0f} | {nats[k]:,.0f} | {rail[k] / nats[k]:.2f} |")
    verdict = {True: "pass", False: "FAIL"}
    print(f"\n| target (issue 12) | value | limit | result |\n| --- | ---: | ---: | --- |\n"
          f"| produce, Rail RF 3 / NATS R3 | {rail['produce'] / nats['produce']:.1f}x | >= 5x | "
          f"{verdict[rail['produce'] >= 5 * nats['produce']]} |\n"
          f"| produce, RF 3 / single broker ({single['produce']:,.0f}/s) | "
          f"{rail['produce'] / single['produce']:.0%} | >= 30% | "
          f"{verdict[rail['produce'] >= 0.3 * single['produce']]} |\n"
          f"| produce -> consume p99 at {LATENCY_RATE:,.0f}/s (p50 {rail['p50_ms']:.2f} ms) | "
          f"{rail['p99_ms']:.2f} ms | <= 3 ms | {verdict[rail['p99_ms'] <= 3]} |\n"
          f"| (the same on a single broker, the floor here: p50 {single['p50_ms']:.2f} ms) | "
          f"{single['p99_ms']:.2f} ms | - | - |\n"
          f"| failover: kill -9 of the leader -> first acks=all ack | {rail['failover_s']:.2f} s "
          f"| <= {SESSION_TIMEOUT_S + 1:g} s | {verdict[rail['failover_s'] <= SESSION_TIMEOUT_S + 1]} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"events": args.events, "runs": rows,
                                           "medians": med}, indent=1))
    left = subprocess.run(["pgrep", "-f", "cluster-bench-"], capture_output=True, text=True, check=False)
    if left.stdout.strip() and str(os.getpid()) not in left.stdout.split():
        print(f"left running: {left.stdout.split()}")
        return 1
    return 1 if any(r.get("errors") for r in rows["rail"] + rows["single"]) else 0


if __name__ == "__main__":
    sys.exit(main())
