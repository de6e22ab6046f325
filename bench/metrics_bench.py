"""How much the broker's ``/metrics`` costs (issue 14): a scrape's time, and W1's throughput.

``scrape``: a real brokerd with ``--metrics`` and 100 topics x 10 partitions (1,000
partitions, a few events each) and 100 groups, each with committed offsets on 5 topics
(50 partitions); times ``--scrapes`` HTTP scrapes from this process (connect, answer,
body read) and reports the median (target: under 100 ms).  ``--busy`` produces to every
partition between scrapes, so each scrape sees new offsets (nothing left as it was).

``w1``: W1 produce of bench/broker_bench.py (one producer process, 100-byte events, one
partition, ``send()`` per event) against a broker with ``--metrics`` scraped every
``--interval`` s by a scraper process, and against a broker without ``--metrics``,
alternating, ``--runs`` pairs; reports each run and the medians (target: cost <= 3%).

    .venv/bin/python bench/metrics_bench.py scrape --scrapes 20
    .venv/bin/python bench/metrics_bench.py w1 --events 300000 --runs 3

No peer: the issue sets an absolute bound and a cost against metrics off.  Not run in CI.
"""

from __future__ import annotations

import argparse
import re
import statistics
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="bench", required=True)
    s = sub.add_parser("scrape", help="time scrapes of 1,000 partitions and 100 groups")
    s.add_argument("--scrapes", type=int, default=20)
    s.add_argument("--busy", action="store_true", help="new offsets before every scrape")
    args = ap.parse_args()
    return bench_scrape(args)


if __name__ == "__main__":
    sys.exit(main())
