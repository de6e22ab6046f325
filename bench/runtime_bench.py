"""The runtime end to end: producer -> broker -> worker host -> handle -> commit, in one run.

    python bench/runtime_bench.py            # full: 1,000,000 events, 3 runs (~2 min)
    python bench/runtime_bench.py --quick    # smoke test: 50,000 events, 1 run
    python bench/runtime_bench.py --concurrency --runs 3   # only the concurrency figures

--concurrency (issue 15): the trivial handler at concurrency 1 (``solo`` as below, 200,000
events; with ``--baseline DIR`` also on an older tree of Rail, interleaved), at concurrency 8
and 50, and a handler sleeping 10 ms on a 1-partition topic with 1,000 keys at concurrency 1
(300 events) and 50 (15,000 events), each from the worker's start to its last commit; the
ratio's target is >= 30x.

Each run, on a fresh broker (fsync=interval) with 100-byte events:
  raw      a runtime.client.Consumer in its own process polls and commits all N events of a
           pre-filled 1-partition topic (the broker bench's W2): from the first poll that
           returned events to the reply of the last commit.
  1 worker ``python -m runtime.worker bench/trivial_worker.py`` drains the same pre-filled
           topic in a new group: from the first handled event (the handler writes its time
           once) to the last commit (the bench polls describe_group every 5 ms until the
           committed offset is the end offset).  Its ratio to raw is the runtime's overhead.
  2x2      ``rail up --broker API`` with a rail.toml declaring the topic with 2 partitions
           (pre-filled, N/2 each) and the worker with replicas=2: first handled event of
           either process to both partitions committed.  Redelivered = handled - N (the
           second replica joins a moment after the first and takes a partition over).
  live     1 worker on an empty topic while a producer process send()s N events one call
           each: from the first send to the last commit.
  dramatiq the same no-op job as a Dramatiq task over Redis (bench/peers.py: one worker
           process x 8 threads, enqueued concurrently, 20,000 tasks).
  pizzeria ``rail up`` starting its own broker with the pizzeria's stations (pizza x2,
           pasta, drinks, tally) plus a stamping worker (x2 on 2 partitions); 200 orders
           go through, then, idle: supervisor RSS, each worker's RSS, and the CPU time of
           the whole tree (supervisor + broker + 7 workers) over 5 s.  Then restart:
           with one event every 10 ms arriving, each stamping replica in turn is killed
           with SIGKILL; the latency is from the kill to the first event the new process
           handles (the first line of its stamps file).
Every process is started on free loopback ports in one temp folder and stopped by pid,
also on errors; the end checks that none is left (pgrep on that folder, the pids started,
and this process's children).  bench/processes.py starts Rail's processes,
bench/pizzeria.py holds the pizzeria session, bench/trivial_worker.py is the handler.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # spawned children inherit sys.path: they import runtime/
    sys.path.insert(0, str(ROOT))

if __package__:
    from .common import (
        cpu_stall_us,
        free_port,
        median,
        print_table,
        spawn,
        stop_popen,
        wait_until,
    )
    from .peers import RedisServer, dramatiq_trivial
    from .pizzeria import pizzeria_session
    from .processes import (
        BrokerView,
        RailUp,
        ensure_running,
        first_event,
        leftovers,
        popen,
        remember,
        stop_resource_tracker,
        worker_argv,
    )
else:  # run as a script
    from common import (
        cpu_stall_us,
        free_port,
        median,
        print_table,
        spawn,
        stop_popen,
        wait_until,
    )
    from peers import RedisServer, dramatiq_trivial
    from pizzeria import pizzeria_session
    from processes import (
        BrokerView,
        RailUp,
        ensure_running,
        first_event,
        leftovers,
        popen,
        remember,
        stop_resource_tracker,
        worker_argv,
    )

from brokerd import protocol as p
from runtime import control
from tests.helpers import BrokerProcess, python_env, start_broker

SIZE = 100
CHUNK = 1000


# --- client processes (spawned) ----------------------------------------------


def _prefill(api: str, topic: str, partitions: int, n: int) -> float:
    """send_many() n events in chunks of CHUNK, dealt to the partitions in turn; seconds."""
    from runtime.client import Producer

    chunk = [b"v" * SIZE] * CHUNK
    with Producer(api) as producer:
        start = time.monotonic()
        for i, first in enumerate(range(0, n, CHUNK)):
            producer.send_many(topic, chunk[: min(CHUNK, n - first)], partition=i % partitions)
        producer.flush()
        return time.monotonic() - start


def _raw_drain(api: str, topic: str, n: int) -> dict[str, float]:
    """A Consumer polls and commits all n events; first poll with events, last commit's reply."""
    from runtime.client import Consumer

    consumer = Consumer(api, group=f"raw-{uuid.uuid4().hex[:8]}", topics=[topic])
    got, first = 0, 0.0
    try:
        while got < n:
            events = consumer.poll(timeout_s=5.0)
            if not events:
                raise RuntimeError(f"topic {topic} ran dry after {got} of {n} events")
            first = first or time.monotonic()
            got += len(events)
            consumer.commit(sync=got >= n)
        return {"first": first, "last": time.monotonic()}
    finally:
        consumer.close()


def _send_each(api: str, topic: str, n: int) -> dict[str, float]:
    """Producer.send() once per event, then flush(); times of the first send and last ack."""
    from runtime.client import Producer

    value = b"v" * SIZE
    with Producer(api) as producer:
        first = time.monotonic()
        for _ in range(n):
            producer.send(topic, value, partition=0)
        producer.flush()
        return {"first": first, "acked": time.monotonic()}




# --- workloads ---------------------------------------------------------------


def prefill(broker: BrokerView, topic: str, partitions: int, n: int) -> dict[tuple[str, int], int]:
    broker.call(p.CreateTopic(topic=topic, partitions=partitions, exist_ok=True))
    with spawn(_prefill, broker.api, topic, partitions, n) as child:
        child.result(600.0)
    return broker.ends(topic)


def raw_and_solo(broker: BrokerView, folder: Path, script: Path, n: int) -> dict[str, float]:
    """The raw group consume, then one worker process, on the same pre-filled topic."""
    ends = prefill(broker, "one", 1, n)
    with spawn(_raw_drain, broker.api, "one", n) as child:
        raw = child.result(600.0)
    marks = folder / "solo"
    marks.mkdir()
    env = {**python_env(), "RAIL_BENCH_FIRST": str(marks)}
    worker = popen(worker_argv(script, broker.api, "solo", "one"), folder / "solo.log", env)
    try:
        done = broker.wait_committed("solo", ends, 600.0, lambda: ensure_running(worker, "worker"))
    finally:
        stop_popen(worker)
    return {"raw": n / (raw["last"] - raw["first"]), "solo": n / (done - first_event(marks))}


def two_replicas(broker: BrokerView, folder: Path, script: Path, n: int) -> dict[str, float]:
    """rail up --broker with replicas=2 over a pre-filled 2-partition topic."""
    ends = prefill(broker, "two", 2, n)
    marks = folder / "two"
    marks.mkdir()
    control_ep = f"tcp://127.0.0.1:{free_port()}"
    toml = (f'[broker]\ndata_dir = "sup-two"\n\n[supervisor]\ncontrol = "{control_ep}"\n\n'
            f'[topics.two]\npartitions = 2\n\n[workers.two]\nscript = "{script}"\n'
            f'topics = ["two"]\nreplicas = 2\n')
    up = RailUp(folder / "up-two", toml, {**python_env(), "RAIL_BENCH_FIRST": str(marks)},
                broker=broker.api)
    try:
        done = broker.wait_committed("two", ends, 600.0, lambda: ensure_running(up.proc, "rail up"))
        handled = wait_processed(control_ep, "two", n)
    finally:
        up.stop()
    return {"two": n / (done - first_event(marks)), "two_redelivered": handled - n}


def wait_processed(control_ep: str, name: str, n: int) -> int:
    """The worker's handled-event count once its health reports (1/s) add up to n."""
    def status() -> int:
        workers = control.call(control_ep, control.Status())["workers"]
        return int(next(w["processed"] for w in workers if w["name"] == name))

    wait_until(lambda: status() >= n, 10.0, interval=0.2, what=f"{name} to report {n} handled")
    return status()


def live(broker: BrokerView, folder: Path, script: Path, n: int) -> dict[str, float]:
    """One worker on an empty topic while a producer process sends n events."""
    broker.call(p.CreateTopic(topic="live", partitions=1, exist_ok=True))
    env = {**python_env(), "RAIL_BENCH_FIRST": ""}
    worker = popen(worker_argv(script, broker.api, "live", "live"), folder / "live.log", env)
    try:
        wait_until(lambda: broker.members("live") == 1, 30.0, what="the live worker to join")
        with spawn(_send_each, broker.api, "live", n) as producer:
            done = broker.wait_committed("live", {("live", 0): n}, 600.0,
                                         lambda: ensure_running(worker, "worker"))
            sent = producer.result(60.0)
    finally:
        stop_popen(worker)
    return {"live": n / (done - sent["first"]), "live_producer": n / (sent["acked"] - sent["first"])}


def rail_session(folder: Path, script: Path, n: int) -> dict[str, float]:
    """raw, 1 worker, 2x2 and live on one fresh broker."""
    process: BrokerProcess = start_broker(folder / "broker", "--log-level", "WARNING")
    remember(process.pid)
    broker = BrokerView(process.api)
    try:
        out = raw_and_solo(broker, folder, script, n)
        out.update(two_replicas(broker, folder, script, n))
        out.update(live(broker, folder, script, n))
        return out
    finally:
        broker.close()
        process.stop(30.0)


SLEEPY = """
import time
def handle(event, ctx):
    time.sleep(0.01)
"""


def drain_rate(broker: BrokerView, folder: Path, script: Path, topic: str, group: str,
               extra: list[str], env: dict[str, str]) -> float:
    """One worker process (``extra`` flags) drains pre-filled ``topic`` in a new group:
    events per second from the worker's start to the last commit (start-up included, the
    same for every variant)."""
    ends = broker.ends(topic)
    n = sum(ends.values())
    start = time.monotonic()
    worker = popen(worker_argv(script, broker.api, group, topic) + extra,
                   folder / f"{group}.log", env)
    try:
        done = broker.wait_committed(group, ends, 600.0, lambda: ensure_running(worker, "worker"))
    finally:
        stop_popen(worker)
    return n / (done - start)


def solo_rate(broker: BrokerView, folder: Path, script: Path, n: int, name: str,
              extra: list[str], baseline: Path | None = None) -> float:
    """The trivial handler drains ``n`` pre-filled keyless events of a new 1-partition topic:
    events/s from its first handled event to the last commit.  With ``baseline`` (a tree of
    Rail from before), that tree's worker host runs (``python -P``: not this folder first)."""
    ends = prefill(broker, name, 1, n)
    marks = folder / name
    marks.mkdir()
    env = {**python_env(), "RAIL_BENCH_FIRST": str(marks)}
    argv = worker_argv(script, broker.api, name, name) + extra
    if baseline is not None:
        argv.insert(1, "-P")
        env["PYTHONPATH"] = str(baseline)
    worker = popen(argv, folder / f"{name}.log", env)
    try:
        done = broker.wait_committed(name, ends, 600.0, lambda: ensure_running(worker, "worker"))
    finally:
        stop_popen(worker)
    return n / (done - first_event(marks))


def concurrency_session(folder: Path, script: Path, n: int, slow: int,
                        baseline: Path | None) -> dict[str, float]:
    """The concurrency figures on one fresh broker: the trivial handler at concurrency 1
    (``solo``; with ``baseline`` the same on the older tree, ``solo_base``), at concurrency
    8 and 50 (keyless events), and a handler sleeping 10 ms over ``slow`` events (x50 for
    concurrency 50) of one partition, 1,000 keys."""
    process: BrokerProcess = start_broker(folder / "broker", "--log-level", "WARNING")
    remember(process.pid)
    broker = BrokerView(process.api)
    try:
        out: dict[str, float] = {}
        # with a baseline, the two alternate which goes first (the second drains a broker
        # that holds one more topic)
        first_base = baseline is not None and folder.name.endswith(("1", "3", "5", "7", "9"))
        if first_base:
            out["solo_base"] = solo_rate(broker, folder, script, n, "base", [], baseline)
        out["solo"] = solo_rate(broker, folder, script, n, "solo", [])
        if baseline is not None and not first_base:
            out["solo_base"] = solo_rate(broker, folder, script, n, "base", [], baseline)
        if baseline is not None:
            out["solo_over_base"] = out["solo"] / out["solo_base"]
        for conc in (8, 50):
            out[f"trivial_c{conc}"] = solo_rate(broker, folder, script, n, f"triv{conc}",
                                                ["--concurrency", str(conc)])
        sleepy = folder / "sleepy_worker.py"
        sleepy.write_text(SLEEPY)
        for conc, count in ((1, slow), (50, slow * 50)):
            topic = f"sleepy{conc}"
            with spawn(_prefill_keyed, broker.api, topic, count) as child:
                child.result(600.0)
            extra = ["--concurrency", str(conc)] if conc > 1 else []
            out[f"sleep_c{conc}"] = drain_rate(broker, folder, sleepy, topic, topic, extra,
                                               python_env())
        out["sleep_speedup"] = out["sleep_c50"] / out["sleep_c1"]
        return out
    finally:
        broker.close()
        process.stop(30.0)


def _prefill_keyed(api: str, topic: str, n: int) -> None:
    """n small events on a 1-partition topic, keys k0..k999 in turn."""
    from runtime.client import Producer

    with Producer(api) as producer:
        producer._call(p.CreateTopic(topic=topic, partitions=1, exist_ok=True))
        for i in range(n):
            producer.send(topic, b"v" * SIZE, key=f"k{i % 1000}", partition=0)
        producer.flush()


def dramatiq_session(n: int) -> dict[str, float]:
    with RedisServer() as server:
        remember(server.pid)
        return {"dramatiq": dramatiq_trivial(server.port, n=n)["events_per_s"]}


# --- runs and report ---------------------------------------------------------


def one_run(folder: Path, script: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    stall, start = cpu_stall_us(), time.monotonic()
    run: dict[str, Any] = rail_session(folder / "rail", script, sizes["events"])
    run.update(dramatiq_session(sizes["dramatiq"]))
    run.update(pizzeria_session(folder / "pizzeria", script, sizes["idle_s"], sizes["orders"]))
    seconds = time.monotonic() - start
    after = cpu_stall_us()
    run["load_avg_1m"] = os.getloadavg()[0]
    if stall is not None and after is not None:
        run["cpu_wait_pct"] = (after - stall) / 1e4 / seconds
    run.update(solo_over_raw=run["solo"] / run["raw"], overhead_us=1e6 / run["solo"] - 1e6 / run["raw"],
               solo_over_dramatiq=run["solo"] / run["dramatiq"],
               live_over_dramatiq=run["live"] / run["dramatiq"])
    restarts = run["restarts"]
    run["restart_ms"] = median(r["first_event_ms"] for r in restarts)
    run["spawn_ms"] = median(r["spawn_ms"] for r in restarts)
    return run


def rate(x: float) -> str:
    return f"{x / 1e3:,.0f}k/s" if x >= 1e4 else f"{x:,.0f}/s"


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    m = {k: median(r[k] for r in runs) for k, v in runs[0].items() if isinstance(v, (int, float))}
    restarts = [r["first_event_ms"] for run in runs for r in run["restarts"]]
    spawns = [r["spawn_ms"] for run in runs for r in run["restarts"]]
    restart, worst = median(restarts), max(restarts)
    return [
        {"figure": "1 worker, trivial handler, pre-filled topic", "value": rate(m["solo"]),
         "target": ">= 200k/s", "result": verdict(m["solo"] >= 200_000)},
        {"figure": "1 worker / Dramatiq (1 proc x 8 threads, Redis)", "value": f"{m['solo_over_dramatiq']:,.0f}x",
         "target": ">= 20x", "result": verdict(m["solo_over_dramatiq"] >= 20)},
        {"figure": "1 worker with the producer running / Dramatiq", "value": f"{m['live_over_dramatiq']:,.0f}x",
         "target": ">= 20x", "result": verdict(m["live_over_dramatiq"] >= 20)},
        {"figure": "supervisor RSS (pizzeria, idle)", "value": f"{m['sup_rss']:.1f} MB", "target": "< 60 MB",
         "result": verdict(m["sup_rss"] < 60)},
        {"figure": "idle worker RSS (largest of 7)", "value": f"{m['worker_rss_max']:.1f} MB", "target": "< 50 MB",
         "result": verdict(m["worker_rss_max"] < 50)},
        {"figure": f"idle CPU, whole tree ({m['tree_procs']:.0f} processes)", "value": f"{m['tree_cpu_pct']:.2f} %",
         "target": "~0 % (< 1 % of a core)", "result": verdict(m["tree_cpu_pct"] < 1.0)},
        {"figure": "  of which supervisor / broker / 7 workers",
         "value": f"{m['supervisor_cpu_pct']:.2f} / {m['broker_cpu_pct']:.2f} / {m['workers_cpu_pct']:.2f} %"},
        {"figure": f"kill -9 -> first event of the new process (median of {len(restarts)})",
         "value": f"{restart:.0f} ms (max {worst:.0f})", "target": "< 1 s", "result": verdict(restart < 1000)},
        {"figure": "  of which: kill -> new process started", "value": f"{median(spawns):.0f} ms"},
        {"figure": "raw group consume (Consumer poll + commit)", "value": rate(m["raw"])},
        {"figure": "1 worker / raw consume (runtime overhead)",
         "value": f"{m['solo_over_raw']:.0%} ({m['overhead_us']:+.2f} µs/event)"},
        {"figure": "2 replicas x 2 partitions under rail up", "value": rate(m["two"])},
        {"figure": "  events handled twice (2nd replica joins late)", "value": f"{m['two_redelivered']:,.0f}"},
        {"figure": "1 worker, producer send()ing concurrently", "value": rate(m["live"])},
        {"figure": "  the producer alone (send() + flush)", "value": rate(m["live_producer"])},
        {"figure": "Dramatiq no-op task over Redis", "value": rate(m["dramatiq"])},
        {"figure": "broker RSS under rail up (idle)", "value": f"{m['broker_rss']:.1f} MB"},
    ]


def report(runs: list[dict[str, Any]], sizes: dict[str, Any], command: str) -> str:
    columns = ["run", ("raw", "raw consume"), ("solo", "1 worker"), ("solo_over_raw", "1 worker/raw"), ("two", "2x2"), ("two_redelivered", "2x2 redeliv."),
               ("live", "live"), ("live_producer", "live producer"), "dramatiq", ("sup_rss", "sup MB"),
               ("worker_rss_max", "worker MB"), ("broker_rss", "broker MB"), ("tree_cpu_pct", "idle CPU %"),
               ("supervisor_cpu_pct", "sup %"), ("broker_cpu_pct", "broker %"), ("workers_cpu_pct", "workers %"),
               ("restart_ms", "restart ms"), ("spawn_ms", "spawn ms"), ("load_avg_1m", "load"),
               ("cpu_wait_pct", "CPU wait %")]
    rows = [{"run": i, **run} for i, run in enumerate(runs, 1)]
    per_run = print_table(rows, columns, title="every run (events/s, MB, %, ms)")
    title = (f"the runtime end to end, medians of {len(runs)} run(s): {sizes['events']:,} events of {SIZE} B, "
             f"Dramatiq {sizes['dramatiq']:,} tasks")
    main = print_table(summary_rows(runs), ["figure", "value", "target", "result"], title=title)
    return f"`{command}`\n\n{main}\n{per_run}"






def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Rail's runtime end to end against Dramatiq; RSS, idle CPU, restart.")
    parser.add_argument("--quick", action="store_true", help="smoke test: 50,000 events, 1 run")
    parser.add_argument("--runs", type=int, help="runs to take medians over (default 3, quick 1)")
    parser.add_argument("--events", type=int, help="events per throughput workload (default 1,000,000)")
    parser.add_argument("--markdown", help="also write the tables, as markdown, to this file")
    parser.add_argument("--concurrency", action="store_true",
                        help="only the concurrency figures: the trivial handler at concurrency 1, "
                        "a 10 ms handler at concurrency 50 vs 1 (medians of --runs)")
    parser.add_argument("--baseline", type=Path,
                        help="with --concurrency: a tree of Rail from before (git archive COMMIT "
                        "| tar -x -C DIR) whose worker host runs the trivial handler too")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, data)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = {"events": args.events or (50_000 if args.quick else 1_000_000),
             "dramatiq": 2_000 if args.quick else 20_000, "idle_s": 2.0 if args.quick else 5.0, "orders": 200}
    runs = args.runs or (1 if args.quick else 3)
    command = ("python bench/runtime_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    folder = Path(tempfile.mkdtemp(prefix="rail-runtime-bench-"))
    script = folder / "trivial_worker.py"  # a copy: every worker's argv then names the folder
    shutil.copy(Path(__file__).with_name("trivial_worker.py"), script)
    print(f"{command}: {runs} run(s), sizes {sizes}, folder {folder}", flush=True)
    if args.concurrency:
        return concurrency_main(args, runs, folder, script, command)
    results, left = [], []
    try:
        for run in range(1, runs + 1):
            results.append(one_run(folder / f"run{run}", script, sizes))
            print(f"run {run}/{runs} done: load {results[-1]['load_avg_1m']:.2f}", flush=True)
        md = report(results, sizes, command)
        if args.markdown:
            Path(args.markdown).write_text(md)
    finally:
        stop_resource_tracker()
        left = leftovers(folder)
        print("\nleft running: " + ("; ".join(left) if left else "nothing"))
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 1 if left else 0


def concurrency_main(args: argparse.Namespace, runs: int, folder: Path, script: Path,
                     command: str) -> int:
    n = args.events or (50_000 if args.quick else 200_000)
    slow = 100 if args.quick else 300
    results = []
    try:
        for run in range(1, runs + 1):
            results.append(concurrency_session(folder / f"run{run}", script, n, slow,
                                               args.baseline))
            print(f"run {run}/{runs}: " + ", ".join(f"{k} {v:,.1f}" for k, v in results[-1].items()),
                  flush=True)
        m = {k: median(r[k] for r in results) for k in results[0]}
        rows = [
            {"figure": f"1 worker, trivial handler, concurrency 1 ({n:,} events)", "value": rate(m["solo"])},
            *([{"figure": f"  the same, baseline tree {args.baseline}", "value": rate(m["solo_base"])},
               {"figure": "  this tree / baseline (median of the per-run ratios)",
                "value": f"{m['solo_over_base']:.3f}x", "target": "1 +- 0.10",
                "result": verdict(abs(m["solo_over_base"] - 1) <= 0.10)}]
              if args.baseline else []),
            {"figure": "trivial handler, concurrency 8 (keyless)", "value": rate(m["trivial_c8"])},
            {"figure": "trivial handler, concurrency 50 (keyless)", "value": rate(m["trivial_c50"])},
            {"figure": "10 ms handler, concurrency 1, 1 partition", "value": f"{m['sleep_c1']:,.0f}/s"},
            {"figure": "10 ms handler, concurrency 50, 1 partition, 1,000 keys",
             "value": f"{m['sleep_c50']:,.0f}/s"},
            {"figure": "  concurrency 50 / concurrency 1", "value": f"{m['sleep_speedup']:.1f}x",
             "target": ">= 30x", "result": verdict(m["sleep_speedup"] >= 30)},
        ]
        md = print_table(rows, ["figure", "value", "target", "result"],
                         title=f"concurrency, medians of {runs} run(s)")
        if args.markdown:
            Path(args.markdown).write_text(f"`{command}`\n\n{md}")
    finally:
        stop_resource_tracker()
        left = leftovers(folder)
        print("\nleft running: " + ("; ".join(left) if left else "nothing"))
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
