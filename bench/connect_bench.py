"""Rail Connect: a JSONL file -> Rail -> PostgreSQL sink, against PostgreSQL's own COPY of
the same rows (the floor) and a naive loop of single-row INSERTs with a commit per row.

    .venv/bin/python bench/connect_bench.py --rows 1000000 --runs 3

Each run starts a fresh PostgreSQL (initdb, fsync on, as the postgres user when root) and a
fresh broker.  Rail's time runs from starting the two tasks (file source, postgres sink)
until the sink has stored the offset of the last row (watched over one connection, every
50 ms), and the table is checked to hold every row.  COPY streams the same rows as CSV into
the same table shape.  The naive loop INSERTs --naive-sample rows, committing each, and its
rate is extrapolated to --rows (said so in the output).  Medians of --runs runs.

On a machine shared with other work the rows/s swing with everyone else's load, so each
Rail run also reports the CPU time its processes used per row (source task, sink task,
broker, PostgreSQL's processes): that figure hardly moves with the load, and 1e6 / its sum
is what the pipeline could reach with one core per process-worth of work to spare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil
import psycopg

from brokerd import protocol as p
from runtime.connection import Connection
from tests.connect.postgres import PostgresServer
from tests.connect.tasks import Task
from tests.helpers import start_broker

TABLE = "CREATE TABLE rows (id BIGINT PRIMARY KEY, name TEXT, qty INT)"


def write_inputs(folder: Path, rows: int) -> tuple[Path, Path]:
    jsonl, csv = folder / "rows.jsonl", folder / "rows.csv"
    with open(jsonl, "w") as j, open(csv, "w") as c:
        for i in range(rows):
            j.write(json.dumps({"id": i, "name": f"row-{i}", "qty": i % 100}) + "\n")
            c.write(f"{i},row-{i},{i % 100}\n")
    return jsonl, csv


def fresh_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS rows, rail_connect_offsets")
        db.execute(TABLE)


def time_copy(dsn: str, csv: Path) -> float:
    fresh_table(dsn)
    started = time.perf_counter()
    with psycopg.connect(dsn) as db, db.cursor() as cur:
        with cur.copy("COPY rows (id, name, qty) FROM STDIN (FORMAT csv)") as copy, \
                open(csv, "rb") as f:
            while chunk := f.read(1 << 20):
                copy.write(chunk)
        db.commit()
    return time.perf_counter() - started


def time_naive(dsn: str, sample: int) -> float:
    """Seconds for ``sample`` single-row INSERTs, each committed."""
    fresh_table(dsn)
    with psycopg.connect(dsn) as db:
        started = time.perf_counter()
        for i in range(sample):
            db.execute("INSERT INTO rows VALUES (%s, %s, %s)", (i, f"row-{i}", i % 100))
            db.commit()
        return time.perf_counter() - started


def stored(db: psycopg.Connection) -> int:
    """Rows the sink has applied: the sum of its stored next offsets."""
    try:
        row = db.execute("SELECT coalesce(sum(next_offset), 0) FROM rail_connect_offsets"
                         ).fetchone()
    except psycopg.errors.UndefinedTable:  # the sink creates it when it starts
        return 0
    return int(row[0]) if row else 0


def cpu_s(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


class CpuWatch:
    """CPU seconds used by the run's processes; PostgreSQL's backends are sampled while
    they live (the sink's exits with it)."""

    def __init__(self, postmaster: int, broker: int) -> None:
        self.pg = psutil.Process(postmaster)
        self.broker = psutil.Process(broker)
        self.broker_start = cpu_s(self.broker)
        self.pg_start = {p.pid: cpu_s(p) for p in [self.pg, *self.pg.children()]}
        self.pg_seen: dict[int, float] = {}

    def sample(self) -> None:
        for proc in [self.pg, *self.pg.children()]:
            self.pg_seen[proc.pid] = cpu_s(proc) or self.pg_seen.get(proc.pid, 0.0)

    def per_row(self, rows: int, tasks: dict[str, list[int]]) -> dict[str, float]:
        used = {name: sum(cpu_s(psutil.Process(pid)) for pid in pids)
                for name, pids in tasks.items()}
        used["broker"] = cpu_s(self.broker) - self.broker_start
        used["postgres"] = sum(t - self.pg_start.get(pid, 0.0) for pid, t in self.pg_seen.items())
        return {name: seconds / rows * 1e6 for name, seconds in used.items()}


def time_rail(dsn: str, jsonl: Path, rows: int, folder: Path, partitions: int,
              batch: int, sink_tasks: int, postmaster: int) -> tuple[float, dict[str, float]]:
    """Seconds for ``rows`` rows through Rail, and the CPU microseconds a row per process."""
    fresh_table(dsn)
    broker = start_broker(folder / f"data-{time.time_ns()}")
    conn = Connection(broker.api)
    conn.call(p.CreateTopic(topic="rows", partitions=partitions))
    conn.close()
    source = {"name": "rows-in", "kind": "source", "class": "file", "topics": ["rows"],
              "batch": batch, "transforms": [{"type": "key", "field": "id"}],
              "config": {"path": str(jsonl)}}
    sink = {"name": "rows-out", "kind": "sink", "class": "postgres", "topics": ["rows"],
            "batch": batch, "tasks": sink_tasks, "config": {"dsn": dsn, "table": "rows", "key_column": "id",
                                       "columns": ["id", "name", "qty"]}}
    tasks = []
    try:
        with psycopg.connect(dsn, autocommit=True) as watch:
            cpu = CpuWatch(postmaster, broker.proc.pid)
            started = time.perf_counter()
            tasks = [*(Task(sink, broker.api, folder / f"sink{i}.log", index=i)
                       for i in range(sink_tasks)),
                     Task(source, broker.api, folder / "source.log")]
            deadline = started + 3600
            while stored(watch) < rows:
                if time.perf_counter() > deadline or any(t.proc.poll() is not None
                                                         for t in tasks):
                    raise RuntimeError("rail run did not finish: see " + str(folder))
                cpu.sample()
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            cpu.sample()
            per_row = cpu.per_row(rows, {"sink": [t.proc.pid for t in tasks[:-1]],
                                         "source": [tasks[-1].proc.pid]})
    finally:
        for t in tasks:
            t.stop()
        broker.stop()
    with psycopg.connect(dsn) as db:
        count = db.execute("SELECT count(*) FROM rows").fetchone()
    assert count is not None and count[0] == rows, f"table holds {count} rows, not {rows}"
    return elapsed, per_row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--naive-sample", type=int, default=5_000)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--sink-tasks", type=int, default=1,
                    help="sink tasks sharing the partitions (a consumer group)")
    ap.add_argument("--batch", type=int, default=5000, help="source and sink batch")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rail-connect-bench-"))
    try:
        return bench(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the inputs and brokers' data: GBs


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False,
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


def bench(args: argparse.Namespace, folder: Path) -> int:
    jsonl, csv = write_inputs(folder, args.rows)
    results: dict[str, list[float]] = {"copy": [], "rail": [], "naive": []}
    cpus: list[dict[str, float]] = []
    loads = [os.getloadavg()[0]]
    for run in range(args.runs):
        pg = PostgresServer(fsync=True)
        try:
            results["copy"].append(args.rows / time_copy(pg.dsn, csv))
            results["naive"].append(args.naive_sample / time_naive(pg.dsn, args.naive_sample))
            elapsed, per_row = time_rail(pg.dsn, jsonl, args.rows, folder, args.partitions,
                                         args.batch, args.sink_tasks, pg.pid)
            results["rail"].append(args.rows / elapsed)
            cpus.append(per_row)
        finally:
            pg.stop()
        loads.append(os.getloadavg()[0])
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} rows/s"
                                              for k, v in results.items())
              + " | rail CPU us/row: " + ", ".join(f"{k} {v:.2f}" for k, v in per_row.items())
              + f", total {sum(per_row.values()):.2f} | load {loads[-1]:.1f}", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    cpu_med = {k: statistics.median(c[k] for c in cpus) for k in cpus[0]}
    print(f"\n{args.rows:,} rows at {commit()}, load average {min(loads):.1f}-{max(loads):.1f}, "
          f"medians of {args.runs} runs (rows/s):")
    print(f"  PostgreSQL COPY (floor)       {med['copy']:>12,.0f}")
    print(f"  file -> Rail -> postgres sink {med['rail']:>12,.0f}  "
          f"({med['rail'] / med['copy']:.0%} of COPY, {med['rail'] / med['naive']:.1f}x naive)")
    print(f"  naive INSERT+commit per row   {med['naive']:>12,.0f}  (timed on "
          f"{args.naive_sample:,} rows, extrapolated: {args.rows / med['naive']:,.0f} s "
          f"for {args.rows:,})")
    print("  Rail CPU us/row (medians)     " + ", ".join(f"{k} {v:.2f}" for k, v in cpu_med.items())
          + f", total {sum(cpu_med.values()):.2f}")
    print(json.dumps({"rows": args.rows, "runs": args.runs, "commit": commit(), "loads": loads,
                      "results": results, "cpu_us_per_row": cpus, "medians": med}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
