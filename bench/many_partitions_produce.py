"""Keyed produce to many partitions: the stall of issue 11 (items 1 and 2), measured.

    python bench/many_partitions_produce.py               # both workloads, 5 runs each
    python bench/many_partitions_produce.py --runs 1 --events 20000

W-keyed: ``--events`` keyed events (distinct keys) to one topic of ``--partitions``
partitions, one flush at the end; events/s, median over ``--runs`` runs (a new topic each).
W-spread: one event to each partition of ``--topics`` topics of ``--partitions`` partitions,
a flush per topic; seconds, median over the runs.

Each run also reports the broker's OUT_OF_ORDER_SEQUENCE errors and dropped replies (its
``stats`` counters), which a clean run has none of.  The script starts its own broker on
free loopback ports in a temp dir (fsync "never": the producer is what is measured) and
stops it by pid.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brokerd import protocol as p  # noqa: E402
from runtime.client import Producer  # noqa: E402
from runtime.connection import Connection  # noqa: E402


def start_broker(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "brokerd", "--data-dir", str(data_dir),
         "--bind", "tcp://127.0.0.1:*", "--ingest", "tcp://127.0.0.1:*"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"api=(\S+)", line)
        if match:
            return proc, match.group(1)
        if not line:
            break
    stop_broker(proc)
    raise RuntimeError("the broker did not start")


def stop_broker(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def counters(conn: Connection) -> dict[str, int]:
    counts = conn.call(p.Stats()).stats["counts"]
    return {"ooo": counts["error.OUT_OF_ORDER_SEQUENCE"], "dropped": counts["replies_dropped"]}


def create(conn: Connection, topic: str, partitions: int) -> None:
    conn.call(p.CreateTopic(topic=topic, partitions=partitions,
                            config={"fsync": "never"}))


def keyed_run(api: str, topic: str, events: int) -> float:
    """Seconds to send ``events`` keyed events and flush."""
    with Producer(api) as producer:
        started = time.perf_counter()
        for i in range(events):
            producer.send(topic, i, key=b"k%d" % i)
        producer.flush()
        return time.perf_counter() - started


def spread_run(api: str, topics: list[str], partitions: int) -> float:
    """Seconds to send one event to each partition of ``topics``, a flush per topic."""
    with Producer(api) as producer:
        started = time.perf_counter()
        for topic in topics:
            for partition in range(partitions):
                producer.send(topic, partition, partition=partition)
            producer.flush()
        return time.perf_counter() - started


def measure(args: argparse.Namespace, api: str) -> dict[str, Any]:
    conn = Connection(api, timeout_s=30)
    keyed, spread, keyed_errors, spread_errors = [], [], [], []
    try:
        for run in range(args.runs):
            topic = f"keyed-{run}"
            create(conn, topic, args.partitions)
            before = counters(conn)
            keyed.append(args.events / keyed_run(api, topic, args.events))
            after = counters(conn)
            conn.call(p.DeleteTopic(topic=topic))  # its files: a broker holds one per partition
            keyed_errors.append({k: after[k] - before[k] for k in after})
            print(f"keyed run {run}: {keyed[-1]:,.0f} events/s {keyed_errors[-1]}", flush=True)
        for run in range(args.runs):
            topics = [f"spread-{run}-{t}" for t in range(args.topics)]
            for topic in topics:
                create(conn, topic, args.partitions)
            before = counters(conn)
            spread.append(spread_run(api, topics, args.partitions))
            after = counters(conn)
            for topic in topics:
                conn.call(p.DeleteTopic(topic=topic))
            spread_errors.append({k: after[k] - before[k] for k in after})
            print(f"spread run {run}: {spread[-1]:.2f} s {spread_errors[-1]}", flush=True)
    finally:
        conn.close()
    return {"keyed": statistics.median(keyed), "spread": statistics.median(spread)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rail-many-partitions-") as tmp:
        proc, api = start_broker(Path(tmp) / "data")
        try:
            result = measure(args, api)
        finally:
            stop_broker(proc)
    print(f"median keyed produce, {args.events:,} events to {args.partitions:,} partitions: "
          f"{result['keyed']:,.0f} events/s")
    print(f"median one event to each of {args.topics} x {args.partitions:,} partitions, "
          f"a flush per topic: {result['spread']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
