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
partition, ``send()`` per event) against a broker with ``--metrics`` scraped every
``--interval`` s by a scraper process, and against a broker without ``--metrics``,
alternating, ``--runs`` pairs; reports each run and the medians (target: cost <= 3%).

    .venv/bin/python bench/metrics_bench.py scrape --scrapes 20
    .venv/bin/python bench/metrics_bench.py host --baseline /tmp/base --runs 7
    .venv/bin/python bench/metrics_bench.py w1 --events 300000 --runs 3

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
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
    args = ap.parse_args()
    return bench_host(args) if args.bench == "host" else bench_scrape(args)


if __name__ == "__main__":
    sys.exit(main())
