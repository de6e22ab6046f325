"""How much the broker's ``/metrics`` costs (issue 14): a scrape's time, and W1's throughput.

``scrape``: a real brokerd with ``--metrics`` and 100 topics x 10 partitions (1,000
partitions, a few events each) and 100 groups, each with committed offsets on 5 topics
(50 partitions); times ``--scrapes`` HTTP scrapes from this process (connect, answer,
body read) and reports the median (target: under 100 ms).  ``--busy`` produces to every
partition between scrapes, so each scrape sees new offsets (nothing left as it was).

``host``: the worker host's loop at concurrency 1 (``Worker._handle_all``) over in-memory
batches of 1,000 events with a trivial handler, ns per event, in a fresh process per
measurement for this tree and for ``--baseline DIR`` (a tree from before the handler
timing, e.g. ``git archive``), alternating, ``--runs`` each: what the handler histogram
costs the host where it costs most, without the broker and the other benchmarks' noise.
``--each`` also times the loop with every call timed (PER_EVENT_FROM_NS = 0).

``w1``: W1 produce of bench/broker_bench.py (one producer process, 100-byte events, one
partition, ``send()`` per event, fsync=interval, acks=1) against a fresh broker with
``--metrics`` scraped every ``--interval`` s (a thread of this process, as Prometheus
would), and against a fresh broker without ``--metrics``; ``--runs`` pairs, which goes
first alternating; reports each run, the medians and the median of the per-pair ratios
(target: cost <= 3%).  After each "on" run it also measures the broker's CPU time (all
its threads) per scrape over 20 back-to-back scrapes: on 2 busy shared cores the pairs vary
by far more than 3%, the CPU per scrape does not.  ``--fill`` also gives each broker the
scrape bench's 1,000 partitions and 100 groups, so that every scrape is a big one.

    .venv/bin/python bench/metrics_bench.py scrape --scrapes 20
    .venv/bin/python bench/metrics_bench.py host --baseline /tmp/base --runs 7
    .venv/bin/python bench/metrics_bench.py w1 --events 5000000 --runs 7 [--fill]

No peer: the issue sets an absolute bound and a cost against metrics off.  Not run in CI.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import spawn

from brokerd import protocol as p
from runtime.producer import Producer
from tests.helpers import BrokerProcess, start_broker

TOPICS, PARTITIONS, GROUPS, GROUP_TOPICS = 100, 10, 100, 5


def metrics_address(broker: BrokerProcess) -> str:
    found = re.search(r"metrics=(\S+)", broker.ready_line)
    assert found, broker.ready_line
    return found.group(1)


def fill(api: str, events: int) -> None:
    """100 topics x 10 partitions with ``events`` each; 100 groups with committed offsets."""
    with Producer(api) as producer:
        for t in range(TOPICS):
            producer._call(p.CreateTopic(topic=f"t-{t:03d}", partitions=PARTITIONS))
        produce_round(producer, events)
        for g in range(GROUPS):
            offsets = [(f"t-{(g + i) % TOPICS:03d}", part, 1)
                       for i in range(GROUP_TOPICS) for part in range(PARTITIONS)]
            producer._call(p.Commit(group=f"g-{g:03d}", offsets=offsets))


def produce_round(producer: Producer, events: int) -> None:
    for t in range(TOPICS):
        for part in range(PARTITIONS):
            for n in range(events):
                producer.send(f"t-{t:03d}", {"n": n}, partition=part)
    producer.flush()


def scrape(address: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as r:
        body = r.read()
        assert r.status == 200
    return time.perf_counter() - started, body


def bench_scrape(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    broker = start_broker(folder / "data", "--metrics", "127.0.0.1:0")
    try:
        fill(broker.api, 2)
        address = metrics_address(broker)
        scrape(address)  # the first: imports and caches warm
        times, body = [], b""
        with Producer(broker.api) as producer:
            for _ in range(args.scrapes):
                if args.busy:
                    produce_round(producer, 1)
                took, body = scrape(address)
                times.append(took)
        samples = sum(1 for line in body.splitlines() if not line.startswith(b"#"))
        times.sort()
        print(f"scrape of {TOPICS * PARTITIONS:,} partitions and {GROUPS} groups: "
              f"{samples:,} samples, {len(body):,} bytes, {args.scrapes} scrapes"
              f"{' (offsets moving between scrapes)' if args.busy else ''}")
        print(f"median {statistics.median(times) * 1000:.1f} ms, min {times[0] * 1000:.1f} ms,"
              f" max {times[-1] * 1000:.1f} ms")
        return 0
    finally:
        broker.stop()


def w1_send(api: str, n: int) -> float:
    """W1: ``send()`` of n 100-byte events to one partition, then flush(); seconds."""
    producer = Producer(api, acks=1)
    value = b"v" * 100
    try:
        producer.partitions_for("w1")  # creates the topic, outside the timing
        started = time.perf_counter()
        for _ in range(n):
            producer.send("w1", value)
        producer.flush()
        return time.perf_counter() - started
    finally:
        producer.close()


class Scraper(threading.Thread):
    """GETs /metrics every ``interval`` s until stopped; counts the scrapes and their time."""

    def __init__(self, address: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.address, self.interval = address, interval
        self.stopped = threading.Event()
        self.times: list[float] = []

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.times.append(scrape(self.address)[0])


CPU_PER_SCRAPE: list[float] = []  # the broker's CPU seconds per scrape, after each "on" run


def broker_cpu_per_scrape(broker: BrokerProcess, address: str, scrapes: int = 20) -> float:
    """The broker process's CPU time (all its threads) per scrape, over back-to-back
    scrapes of the broker as W1 left it."""
    proc = psutil.Process(broker.pid)
    before = proc.cpu_times()
    for _ in range(scrapes):
        scrape(address)
    after = proc.cpu_times()
    return (after.user + after.system - before.user - before.system) / scrapes


def w1_rate(folder: Path, metrics: bool, args: argparse.Namespace) -> tuple[float, list[float]]:
    """W1 events/s on a fresh broker (with ``--metrics`` scraped, or without), and the
    scrapes' times (s)."""
    config = folder / "broker.toml"
    config.write_text('[topic_defaults]\nfsync = "interval"\n')
    extra = ["--config", str(config), "--log-level", "WARNING"]
    broker = start_broker(folder / f"data-{time.time_ns()}",
                          *extra, *(["--metrics", "127.0.0.1:0"] if metrics else []))
    scraper = None
    try:
        if args.fill:
            fill(broker.api, 1)
        if metrics:
            scraper = Scraper(metrics_address(broker), args.interval)
            scraper.start()
        with spawn(w1_send, broker.api, args.events) as child:
            seconds = child.result(600.0)
        if scraper is not None:
            scraper.stopped.set()
            scraper.join(30)
            CPU_PER_SCRAPE.append(broker_cpu_per_scrape(broker, metrics_address(broker)))
        return args.events / seconds, scraper.times if scraper else []
    finally:
        if scraper is not None:
            scraper.stopped.set()
            scraper.join(30)
        broker.stop()


def bench_w1(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="metrics-w1-"))
    on: list[float] = []
    off: list[float] = []
    ratios: list[float] = []
    for run in range(args.runs):
        order = (False, True) if run % 2 == 0 else (True, False)
        rates = {}
        for metrics in order:
            rates[metrics], scrapes = w1_rate(folder, metrics, args)
            if metrics:
                print(f"run {run + 1}: metrics on  {rates[metrics]:11,.0f} events/s "
                      f"({len(scrapes)} scrapes, median "
                      f"{statistics.median(scrapes or [0]) * 1000:.1f} ms)", flush=True)
            else:
                print(f"run {run + 1}: metrics off {rates[metrics]:11,.0f} events/s", flush=True)
        on.append(rates[True])
        off.append(rates[False])
        ratios.append(rates[True] / rates[False])
    print(f"W1 send(), {args.events:,} events{', 1,000 partitions + 100 groups' if args.fill else ''},"
          f" scraped every {args.interval:g} s, medians of {args.runs} pairs: "
          f"off {statistics.median(off):,.0f}/s, on {statistics.median(on):,.0f}/s, "
          f"on/off {statistics.median(ratios):.3f} (per-pair ratios: "
          + " ".join(f"{r:.3f}" for r in ratios) + ")")
    cpu = statistics.median(CPU_PER_SCRAPE)
    print(f"the broker's CPU per scrape after W1 (median over the runs of 20 back to back): "
          f"{cpu * 1000:.1f} ms, {cpu / args.interval:.2%} of a core at one scrape every "
          f"{args.interval:g} s")
    return 0


HOST_LOOP = """
import statistics, sys, time
import runtime.worker as host
from runtime.consumer import Event
if sys.argv[1] == "each":
    host.PER_EVENT_FROM_NS = 0
def handle(event, ctx):
    pass
worker = host.Worker(host.Script(handle, None, None), host.Options(
    broker="tcp://127.0.0.1:9", group="g", topics=["t"], name="bench"))
events = [Event("t", 0, i, b"x" * 100) for i in range(1000)]
took = []
for _ in range(300):
    started = time.perf_counter_ns()
    worker._handle_all(events)
    took.append((time.perf_counter_ns() - started) / len(events))
print(statistics.median(took))
"""


def host_loop_ns(tree: Path, mode: str) -> float:
    """ns per event of the host's loop, measured in a new process importing ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", HOST_LOOP, mode], env=env, cwd=tree,
                          capture_output=True, text=True, timeout=120, check=True)
    return float(done.stdout)


def bench_host(args: argparse.Namespace) -> int:
    trees = {"this tree": (ROOT, "batch"), "baseline": (args.baseline, "batch")}
    if args.each:
        trees["every call timed"] = (ROOT, "each")
    results: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, (tree, mode) in trees.items():
            results[name].append(host_loop_ns(tree, mode))
    base = statistics.median(results["baseline"])
    print(f"worker host loop, trivial handler, batches of 1,000, medians of {args.runs} runs")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:18} {med:7.1f} ns/event  ({med - base:+.1f} ns vs baseline)  runs: "
              + " ".join(f"{v:.0f}" for v in values))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="bench", required=True)
    s = sub.add_parser("scrape", help="time scrapes of 1,000 partitions and 100 groups")
    s.add_argument("--scrapes", type=int, default=20)
    s.add_argument("--busy", action="store_true", help="new offsets before every scrape")
    h = sub.add_parser("host", help="the worker host's loop with and without handler timing")
    h.add_argument("--baseline", type=Path, required=True, help="a tree of Rail from before")
    h.add_argument("--runs", type=int, default=7)
    h.add_argument("--each", action="store_true", help="also with every call timed")
    w = sub.add_parser("w1", help="W1 produce with the broker's metrics scraped vs off")
    w.add_argument("--events", type=int, default=2_000_000)
    w.add_argument("--runs", type=int, default=5)
    w.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    w.add_argument("--fill", action="store_true", help="1,000 partitions and 100 groups too")
    args = ap.parse_args()
    bench = {"scrape": bench_scrape, "host": bench_host, "w1": bench_w1}[args.bench]
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
