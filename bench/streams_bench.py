"""Rail Streams against Bytewax and a plain Python loop: same events, same run.

Two jobs over the same N events (key ``k<i % keys>``, value ``{"n": i}``, event time i ms):

- window: a keyed tumbling-window count (1 s windows, emitted when a window closes);
- map/filter: a stateless map and filter.

Rail reads the events from a real broker (loaded before the clock starts) and writes its
outputs, changelog and checkpoints with acks "all", as a pipeline does in production: the
time is from the pipeline's start until every task has committed the last input offset.
Bytewax reads the same events from its own local input (``TestingSource``) and writes to a
``TestingSink``; the plain loop computes the same results in a dict.  Medians of ``--runs``.
Rail's CPU time is printed too (its process's, all threads, and the broker's): on a loaded
machine its time waiting for a core shows as the difference.

The restore figure: a changelog of ``--restore-keys`` keys (written as a pipeline writes it,
in commits of 5,000 keys), then a task restored from it with no local file.

    .venv/bin/python bench/streams_bench.py                 # 1M events, 3 runs
    .venv/bin/python bench/streams_bench.py --events 100000 --runs 1 --restore-keys 100000
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brokerd import protocol as p
from runtime.connection import Connection
from runtime.producer import Producer
from runtime.streams import Pipeline, Tumbling
from runtime.streams.changelog import batch_records, changelog_topic
from runtime.streams.checkpoint import Checkpoint
from runtime.streams.runner import Runner
from runtime.streams.sender import OutBatch, Sender, producer_id
from runtime.streams.task import Task
from runtime.worker import Hosted, Options
from tests.helpers import start_broker

WINDOW_MS = 1000
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def events(n: int, keys: int) -> list[tuple[str, dict[str, int], int]]:
    return [(f"k{i % keys}", {"n": i}, i) for i in range(n)]


def keep(v: dict[str, int]) -> bool:
    return v["n"] % 3 != 0


def price(v: dict[str, int]) -> dict[str, int]:
    return {"n": v["n"], "price": v["n"] * 2 + 1}


# -- the floor: a plain loop -----------------------------------------------------------
def plain_window(evs: list[tuple[str, dict[str, int], int]]) -> int:
    counts: Counter[tuple[str, int]] = Counter()
    for key, _v, ts in evs:
        counts[(key, ts - ts % WINDOW_MS)] += 1
    return len(counts)


def plain_map_filter(evs: list[tuple[str, dict[str, int], int]]) -> int:
    return len([price(v) for _k, v, _ts in evs if keep(v)])


# -- Bytewax ---------------------------------------------------------------------------
def bytewax_window(evs: list[tuple[str, dict[str, int], int]]) -> int:
    import bytewax.operators as op
    import bytewax.operators.windowing as win
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    out: list[Any] = []
    flow = Dataflow("window")
    stream = op.input("in", flow, TestingSource(evs, batch_size=1000))
    clock = win.EventClock(lambda e: EPOCH + timedelta(milliseconds=e[2]),
                           wait_for_system_duration=timedelta(0))
    windower = win.TumblingWindower(length=timedelta(milliseconds=WINDOW_MS), align_to=EPOCH)
    counted = win.count_window("count", stream, clock, windower, lambda e: e[0])
    op.output("out", counted.down, TestingSink(out))
    run_main(flow)
    return len(out)


def bytewax_map_filter(evs: list[tuple[str, dict[str, int], int]]) -> int:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    out: list[Any] = []
    flow = Dataflow("mapfilter")
    stream = op.input("in", flow, TestingSource(evs, batch_size=1000))
    kept = op.filter("keep", stream, lambda e: keep(e[1]))
    op.output("out", op.map("price", kept, lambda e: price(e[1])), TestingSink(out))
    run_main(flow)
    return len(out)


# -- Rail Streams ----------------------------------------------------------------------
def load(api: str, topic: str, evs: list[tuple[str, dict[str, int], int]]) -> None:
    with Producer(api) as producer:
        producer._call(p.CreateTopic(topic=topic, partitions=1, exist_ok=True))
        for key, value, ts in evs:
            producer.send(topic, value, key=key, timestamp=ts)
        producer.flush()


def run_rail(api: str, pipeline: Pipeline, end: int) -> tuple[float, float]:
    """Run ``pipeline`` in this process until its task committed offset ``end``: seconds,
    and the CPU seconds this process used meanwhile (every thread: the pipeline's, ZeroMQ's)."""
    options = Options(broker=api, group=pipeline.app, topics=[pipeline.source],
                      name=pipeline.app, member_id=f"{pipeline.app}-0")
    host = Hosted(options, logging.getLogger("bench"))
    runner = Runner(pipeline, host)
    started, cpu = time.perf_counter(), time.process_time()
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while True:
        task = runner.tasks.get((pipeline.source, 0))
        if task is not None and task.offset >= end and not task.processed_since_commit \
                and not task.in_flight:
            break
        if not thread.is_alive():
            raise RuntimeError("the pipeline stopped early")
        time.sleep(0.005)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    host.stopping = True
    thread.join(30)
    return elapsed, cpu


def rail_window(api: str, state: Path, run: int, end: int) -> tuple[float, float]:
    app = Pipeline(f"bw{run}", source="events", state_dir=state)
    (app.stream.group_by().window(Tumbling(WINDOW_MS), emit="close").count("counts")
        .to(f"bw{run}.out"))
    return run_rail(api, app, end)


def rail_map_filter(api: str, state: Path, run: int, end: int) -> tuple[float, float]:
    app = Pipeline(f"bm{run}", source="events", state_dir=state)
    app.stream.filter(keep).map(price).to(f"bm{run}.out")
    return run_rail(api, app, end)


def restore(api: str, state: Path, keys: int) -> float:
    """Write a changelog of ``keys`` keys as a task does, then time a restore from it."""
    app = Pipeline("restore", source="restore-in", state_dir=state)
    app.stream.group_by().count("counts")
    topic = changelog_topic("restore")
    conn = Connection(api, timeout_s=60)
    try:
        conn.call(p.CreateTopic(topic="restore-in", partitions=1, exist_ok=True))
        conn.call(p.CreateTopic(topic=topic, partitions=1, exist_ok=True,
                                config={"cleanup_policy": "compact"}))
        sender, pid, seq = Sender(conn), producer_id("restore", topic, "0"), 0
        import msgspec
        enc = msgspec.msgpack.encode
        for commit, start in enumerate(range(0, keys, 5000), 1):
            updates = [("counts", enc(f"key-{i}"), enc(1)) for i in range(start, min(keys, start + 5000))]
            ck = Checkpoint(commit=commit, incarnation="bench", changelog_seq=seq + len(updates) + 1)
            records, count = batch_records(updates, ck, 0)
            sender.send_all([OutBatch(topic, 0, pid, seq, count, records)])
            seq += count
        task = Task(app, "restore-in", 0, conn, sender, {}, state / "restored")
        started = time.perf_counter()
        task.restore()
        elapsed = time.perf_counter() - started
        assert task.restored_from == "changelog"
        assert task.store("counts").get(enc(f"key-{keys - 1}")) == 1
        task.close()
        return elapsed
    finally:
        conn.close()


def broker_cpu(pid: int) -> float:
    """CPU seconds (user + system) the broker process has used so far."""
    import psutil
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--restore-keys", type=int, default=1_000_000)
    ap.add_argument("--no-bytewax", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    evs = events(args.events, args.keys)
    results: dict[str, dict[str, list[float]]] = {"window": {}, "map/filter": {}}
    cpus: dict[str, dict[str, list[float]]] = {"window": {}, "map/filter": {}}
    with tempfile.TemporaryDirectory(prefix="streams-bench-") as tmp:
        broker = start_broker(Path(tmp) / "data")
        try:
            load(broker.api, "events", evs)
            for run in range(args.runs):
                for job, plain, bw, rail in (("window", plain_window, bytewax_window, rail_window),
                                             ("map/filter", plain_map_filter, bytewax_map_filter,
                                              rail_map_filter)):
                    t = time.perf_counter()
                    plain(evs)
                    results[job].setdefault("plain loop", []).append(time.perf_counter() - t)
                    if not args.no_bytewax:
                        t = time.perf_counter()
                        bw(evs)
                        results[job].setdefault("bytewax", []).append(time.perf_counter() - t)
                    before = broker_cpu(broker.pid)
                    secs, cpu = rail(broker.api, Path(tmp) / f"state-{job[0]}{run}", run,
                                     len(evs))
                    results[job].setdefault("rail streams", []).append(secs)
                    cpus[job].setdefault("pipeline", []).append(cpu)
                    cpus[job].setdefault("broker", []).append(broker_cpu(broker.pid) - before)
                    print(f"run {run + 1}: {job} done", file=sys.stderr, flush=True)
            restore_s = restore(broker.api, Path(tmp) / "restore", args.restore_keys) \
                if args.restore_keys else None
        finally:
            broker.stop()
    print(f"{args.events:,} events, {args.keys} keys, medians of {args.runs} run(s)\n")
    print(f"| job | {' | '.join(results['window'])} |")
    print("|---|" + "---|" * len(results["window"]))
    for job, by in results.items():
        cells = [f"{median(s):.2f} s ({args.events / median(s) / 1000:.0f}k ev/s)"
                 for s in by.values()]
        print(f"| {job} | {' | '.join(cells)} |")
    for job, by in results.items():
        print(f"{job} runs: " + "; ".join(f"{name} {', '.join(f'{x:.2f}' for x in xs)}"
                                          for name, xs in by.items()))
    for job, by in results.items():
        rail_s = median(by["rail streams"])
        if "bytewax" in by:
            print(f"{job}: Rail Streams is {median(by['bytewax']) / rail_s:.2f}x Bytewax's speed")
        print(f"{job}: Rail Streams runs at {median(by['plain loop']) / rail_s:.1%} of the plain "
              "loop's speed")
    for job, by in cpus.items():
        print(f"{job}: Rail Streams' CPU time (medians): the pipeline's process "
              f"{median(by['pipeline']):.2f} s, the broker {median(by['broker']):.2f} s")
    if restore_s is not None:
        print(f"restore of a {args.restore_keys:,}-key store from its changelog: {restore_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
