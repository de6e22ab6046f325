"""Rail against Redis Streams on one machine, in one run: produce, consume, latency.

    python bench/broker_bench.py            # full: 1,000,000 events, 3 runs (5-8 min)
    python bench/broker_bench.py --quick    # smoke test: 50,000 events, 1 run

Workloads (the same for both systems; clients always in their own processes):
  W1 produce  one producer, N events of 100 bytes, one topic / stream, one partition.
              Rail: Producer.send() per event, and send_many() in chunks of 1,000.
              Redis: XADD in pipelines of 1,000 (bench/peers.py).
              Rail fsync=interval acks=1 vs Redis appendfsync everysec, and
              Rail fsync=always acks=all (group commit) vs Redis appendfsync always.
  W2 consume  one group member reads and commits all N: Rail poll + commit per batch,
              Redis XREADGROUP COUNT 1000 + XACK per batch.
  W3 latency  20,000 events paced at 5,000/s, send-to-receipt by a group member in
              another process; the send time travels in the payload.
Each run also measures raw pyzmq PUSH/PULL (1,000 events a frame) as a ceiling, and
each broker's RSS after its workloads and its CPU while idle for 3 s.  Every broker and
redis-server is started on a free loopback port with a temp dir and stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # spawned children inherit sys.path: they import runtime/
    sys.path.insert(0, str(ROOT))

if __package__:
    from .common import (Timer, cpu_stall_us, latency_summary_ms, median, print_table, proc_rss_mb, spawn, stop_popen,
                         wait_until)
    from .peers import RedisServer, raw_zmq_pushpull, redis_consume, redis_latency, redis_produce
else:  # run as a script
    from common import (Timer, cpu_stall_us, latency_summary_ms, median, print_table, proc_rss_mb, spawn, stop_popen,
                        wait_until)
    from peers import RedisServer, raw_zmq_pushpull, redis_consume, redis_latency, redis_produce

SIZE = 100
CHUNK = 1000  # send_many chunk, like Redis' pipelines of 1,000 XADD
# W3 producers: the headline linger_ms=0 ships what the linger thread finds on its 1 ms
# tick; linger_ms=1 waits for batches to be 1 ms old.  (batch_size=1 is no faster: with
# acks=all its 5 one-event batches in flight cannot keep up with 5,000/s.)
LATENCY_PRODUCERS: dict[str, dict[str, Any]] = {
    "latency": {"linger_ms": 0},
    "linger1": {"linger_ms": 1},
}
_STAMP = struct.Struct("<q")  # latency payload: int64 time.time_ns() at send, then padding
STARTED: list[int] = []  # pids of every broker and redis-server this run started


# --- the broker under test ---------------------------------------------------


class RailBroker:
    """``python -m brokerd`` on free loopback ports with a temp data dir and a TOML config.

    with RailBroker(fsync="always") as broker:
        Producer(broker.api, acks="all")
    """

    def __init__(self, fsync: str, startup_timeout: float = 15.0) -> None:
        self.fsync = fsync
        self.startup_timeout = startup_timeout
        self.dir = ""
        self.api = ""
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "broker not started"
        return self._proc.pid

    def start(self) -> RailBroker:
        self.dir = tempfile.mkdtemp(prefix="rail-bench-broker-")
        config = Path(self.dir, "broker.toml")
        config.write_text(f'[topic_defaults]\nfsync = "{self.fsync}"\n')
        command = [sys.executable, "-m", "brokerd", "--data-dir", str(Path(self.dir, "data")),
                   "--bind", "tcp://127.0.0.1:*", "--ingest", "tcp://127.0.0.1:*",
                   "--config", str(config), "--log-level", "WARNING"]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(Path(self.dir, "broker.log"), "w") as log:
            self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                          env=env, cwd=ROOT)
        STARTED.append(self._proc.pid)
        try:
            self.api = self._read_api_endpoint()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_api_endpoint(self) -> str:
        """Wait, bounded, for ``brokerd ready api=... ingest=... data=...``."""
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self._proc.stdout], [], [], 0.1)
            if readable:
                line = self._proc.stdout.readline()
                if line.startswith("brokerd ready"):
                    return line.split("api=")[1].split()[0]
                if not line:
                    break
        log = Path(self.dir, "broker.log").read_text(errors="replace")
        raise RuntimeError(f"brokerd did not become ready (exit {self._proc.poll()}):\n{log[-2000:]}")

    def idle_cpu_percent(self, seconds: float = 3.0) -> float:
        """The broker's CPU use while nothing talks to it, in % of one core."""
        proc = psutil.Process(self.pid)
        before = proc.cpu_times()
        time.sleep(seconds)
        after = proc.cpu_times()
        busy = (after.user - before.user) + (after.system - before.system)
        return busy / seconds * 100

    def stop(self) -> None:
        """Stop by pid (SIGTERM, wait, SIGKILL) and remove the data dir."""
        if self._proc is not None:
            stop_popen(self._proc, timeout=30.0)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> RailBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- Rail clients, each run in its own process -------------------------------


def _producer(api: str, acks: int | str, **options: Any) -> Any:
    from runtime.client import Producer

    return Producer(api, acks=acks, **options)


def _rail_send(api: str, topic: str, n: int, acks: int | str) -> float:
    """Producer.send() per event, then flush(); seconds from first send to last ack."""
    producer = _producer(api, acks)
    value = b"v" * SIZE
    try:
        producer.partitions_for(topic)  # creates the topic, outside the timing
        with Timer() as timer:
            for _ in range(n):
                producer.send(topic, value)
            producer.flush()
        return timer.elapsed
    finally:
        producer.close()


def _rail_send_many(api: str, topic: str, n: int, acks: int | str) -> float:
    """Producer.send_many() of CHUNK events at a time, then flush(); seconds."""
    producer = _producer(api, acks)
    chunk = [b"v" * SIZE] * CHUNK
    try:
        producer.partitions_for(topic)
        with Timer() as timer:
            for start in range(0, n, CHUNK):
                producer.send_many(topic, chunk[: min(CHUNK, n - start)])
            producer.flush()
        return timer.elapsed
    finally:
        producer.close()


def _rail_drain(api: str, topic: str, n: int) -> float:
    """One group member polls all n events and commits each batch; seconds."""
    from runtime.client import Consumer

    consumer = Consumer(api, group=f"g-{uuid.uuid4().hex[:8]}", topics=[topic])
    got = 0
    try:
        with Timer() as timer:
            while got < n:
                events = consumer.poll(timeout_s=5.0)
                if not events:
                    raise RuntimeError(f"topic {topic} ran dry after {got} of {n} events")
                got += len(events)
                consumer.commit(sync=got >= n)  # the last commit waits for its reply
        return timer.elapsed
    finally:
        consumer.close()


def _rail_paced(api: str, topic: str, n: int, rate: float, acks: int | str,
                options: dict[str, Any]) -> dict[str, float]:
    """send() one event at a time at `rate`/s against absolute deadlines, then flush()."""
    producer = _producer(api, acks, **options)
    padding = b"p" * (SIZE - _STAMP.size)
    interval = 1.0 / rate
    try:
        producer.partitions_for(topic)
        start = time.monotonic()
        for i in range(n):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(topic, _STAMP.pack(time.time_ns()) + padding)
        producer.flush()
        return {"achieved_rate": n / (time.monotonic() - start)}
    finally:
        producer.close()


def _rail_receiver(api: str, topic: str, n: int, ready_path: str, timeout: float) -> dict[str, float]:
    """A group member polling `topic`; per event, receipt time minus the stamp inside it."""
    from runtime.client import Consumer

    consumer = Consumer(api, group=f"g-{uuid.uuid4().hex[:8]}", topics=[topic])
    latencies: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        Path(ready_path).touch()
        while len(latencies) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"latency consumer got {len(latencies)} of {n} events")
            events = consumer.poll(timeout_s=1.0)
            now = time.time_ns()
            latencies.extend(now - _STAMP.unpack_from(e.value)[0] for e in events)
            if events:
                consumer.commit(sync=False)
        return latency_summary_ms(latencies)
    finally:
        consumer.close()


# --- workloads (parent side) -------------------------------------------------


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def rail_latency(broker: RailBroker, n: int, rate: float, acks: int | str,
                 options: dict[str, Any]) -> dict[str, Any]:
    """Paced producer process -> broker -> polling group member in a third process."""
    topic = _topic("latency")
    ready = os.path.join(broker.dir, f"ready-{topic}")
    timeout = n / rate * 2 + 60.0
    with spawn(_rail_receiver, broker.api, topic, n, ready, timeout) as receiver:
        wait_until(lambda: receiver.ensure_alive() or os.path.exists(ready), 60.0, what="latency consumer")
        time.sleep(0.2)  # let its first long poll reach the broker
        with spawn(_rail_paced, broker.api, topic, n, rate, acks, options) as producer:
            sent = producer.result(timeout)
            summary = receiver.result(timeout)
    return {**summary, "achieved_rate": sent["achieved_rate"]}


def rail_session(fsync: str, acks: int | str, sizes: dict[str, Any], consume: bool) -> dict[str, float]:
    """W1 (send, send_many), optionally W2, and W3 on one fresh broker; then RSS, idle CPU."""
    n, out = sizes["events"], {}
    with RailBroker(fsync) as broker:
        with spawn(_rail_send, broker.api, _topic("send"), n, acks) as child:
            out["send"] = n / child.result(600.0)
        bulk_topic = _topic("bulk")
        with spawn(_rail_send_many, broker.api, bulk_topic, n, acks) as child:
            out["send_many"] = n / child.result(600.0)
        if consume:
            with spawn(_rail_drain, broker.api, bulk_topic, n) as child:
                out["consume"] = n / child.result(600.0)
        for variant, options in LATENCY_PRODUCERS.items():
            latency = rail_latency(broker, sizes["latency"], sizes["rate"], acks, options)
            out.update({f"{variant}_{k}": v for k, v in latency.items()})
        out["rss_mb"] = proc_rss_mb(broker.pid)
        out["idle_cpu_pct"] = broker.idle_cpu_percent(3.0)
    return out


def redis_session(appendfsync: str, sizes: dict[str, Any], consume: bool) -> dict[str, float]:
    """The same workloads against a fresh redis-server (bench/peers.py)."""
    n, out = sizes["events"], {}
    with RedisServer(appendfsync=appendfsync) as server:
        STARTED.append(server.pid)
        out["produce"] = redis_produce(server.port, n=n, size=SIZE, pipeline=CHUNK)["events_per_s"]
        if consume:
            out["consume"] = redis_consume(server.port, n=n, size=SIZE, count=1000)["events_per_s"]
        latency = redis_latency(server.port, n=sizes["latency"], rate=sizes["rate"], size=SIZE)
        out.update({f"latency_{k}": v for k, v in latency.items() if isinstance(v, float)})
        out["rss_mb"] = proc_rss_mb(server.pid)
    return out


def one_run(sizes: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every workload once, Rail and Redis interleaved so drifting load hits both."""
    zmq = raw_zmq_pushpull(n_events=sizes["events"], per_frame=1000, size=SIZE)
    return {
        "zmq": {"events_per_s": zmq["events_per_s"]},
        "rail_interval": rail_session("interval", 1, sizes, consume=True),
        "redis_everysec": redis_session("everysec", sizes, consume=True),
        "rail_always": rail_session("always", "all", sizes, consume=False),
        "redis_always": redis_session("always", sizes, consume=False),
    }


# --- report ------------------------------------------------------------------


def medians(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {system: {key: median(run[system][key] for run in runs) for key in runs[0][system]}
            for system in runs[0]}


def _rate_row(name: str, rail: float, redis: float, target: float) -> dict[str, Any]:
    ratio = rail / redis
    return {"workload": name, "rail": f"{rail / 1e3:,.0f}k/s", "redis": f"{redis / 1e3:,.0f}k/s",
            "ratio": f"{ratio:.2f}x", "target": f">= {target:g}x", "result": "pass" if ratio >= target else "FAIL"}


def _latency_rows(name: str, rail: dict[str, float], redis: dict[str, float], p99_target: float | None,
                  variant: str = "latency") -> list[dict[str, Any]]:
    """p50/p99/p99.9 and achieved rate; the ratio is Redis' latency over Rail's (> 1: Rail faster)."""
    rows = []
    for stat, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        ours, theirs = rail[f"{variant}_{stat}"], redis[f"latency_{stat}"]
        row = {"workload": f"{name}: {label}", "rail": f"{ours:.2f} ms", "redis": f"{theirs:.2f} ms",
               "ratio": f"{theirs / ours:.2f}x", "target": "", "result": ""}
        if label == "p99" and p99_target is not None:
            row.update(target=f"<= {p99_target:g} ms", result="pass" if ours <= p99_target else "FAIL")
        rows.append(row)
    rows.append({"workload": f"{name}: events/s sent", "rail": f"{rail[f'{variant}_achieved_rate']:,.0f}/s",
                 "redis": f"{redis['latency_achieved_rate']:,.0f}/s", "target": "5,000/s"})
    return rows


def _resource_rows(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    ri, ra = m["rail_interval"], m["rail_always"]
    rss, cpu = max(ri["rss_mb"], ra["rss_mb"]), max(ri["idle_cpu_pct"], ra["idle_cpu_pct"])
    redis_rss = max(m["redis_everysec"]["rss_mb"], m["redis_always"]["rss_mb"])
    return [
        {"workload": "broker RSS after its workloads (max)", "rail": f"{rss:.0f} MB", "redis": f"{redis_rss:.0f} MB",
         "target": "< 150 MB", "result": "pass" if rss < 150 else "FAIL"},
        {"workload": "idle broker CPU over 3 s (max)", "rail": f"{cpu:.2f} %",
         "target": "~0 % (< 1 %)", "result": "pass" if cpu < 1.0 else "FAIL"},
    ]


def summary_rows(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    ri, re, ra, rs = m["rail_interval"], m["redis_everysec"], m["rail_always"], m["redis_always"]
    return [
        _rate_row("W1 produce, send(), interval+acks=1 vs everysec", ri["send"], re["produce"], 5),
        _rate_row("W1 produce, send_many(), interval+acks=1 vs everysec", ri["send_many"], re["produce"], 5),
        _rate_row("W1 produce, send(), always+acks=all vs always", ra["send"], rs["produce"], 3),
        _rate_row("W1 produce, send_many(), always+acks=all vs always", ra["send_many"], rs["produce"], 3),
        _rate_row("W2 consume+commit, interval vs everysec", ri["consume"], re["consume"], 4),
        *_latency_rows("W3 linger_ms=0, interval+acks=1 vs everysec", ri, re, 1.0),
        *_latency_rows("W3 linger_ms=0, always+acks=all vs always", ra, rs, 2.0),
        *_latency_rows("W3 linger_ms=1, interval+acks=1 vs everysec", ri, re, None, variant="linger1"),
        *_latency_rows("W3 linger_ms=1, always+acks=all vs always", ra, rs, None, variant="linger1"),
        *_resource_rows(m),
    ]


def zmq_rows(m: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    ceiling = m["zmq"]["events_per_s"]
    figures = [("raw pyzmq PUSH/PULL, 1,000 events/frame", ceiling),
               ("Rail W1 send(), interval+acks=1", m["rail_interval"]["send"]),
               ("Rail W1 send_many(), interval+acks=1", m["rail_interval"]["send_many"]),
               ("Rail W1 send(), always+acks=all", m["rail_always"]["send"]),
               ("Rail W1 send_many(), always+acks=all", m["rail_always"]["send_many"]),
               ("Rail W2 consume+commit", m["rail_interval"]["consume"])]
    return [{"figure": name, "events/s": f"{rate / 1e3:,.0f}k/s", "of pyzmq": f"{rate / ceiling:.1%}"}
            for name, rate in figures]


def per_run_rows(runs: list[dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    rows = []
    for i, run in enumerate(runs, 1):
        for system, figures in run.items():
            rows.append({"run": i, "system": system, **{k: v for k, v in figures.items()}})
    return rows


def report(runs: list[dict[str, dict[str, float]]], sizes: dict[str, Any], command: str) -> str:
    m = medians(runs)
    columns = ["run", "system", ("events_per_s", "pyzmq"), "send", "send_many", "produce", "consume",
               ("latency_p50_ms", "W3 p50"), ("latency_p99_ms", "W3 p99"), ("latency_p999_ms", "W3 p99.9"),
               ("latency_achieved_rate", "W3 rate"), ("linger1_p50_ms", "linger1 p50"),
               ("linger1_p99_ms", "linger1 p99"), ("rss_mb", "RSS MB"), ("idle_cpu_pct", "idle CPU %"),
               ("load_avg_1m", "load"), ("cpu_wait_pct", "CPU wait %")]
    per_run = print_table(per_run_rows(runs), columns, title="every run (events/s, ms, MB, %)")
    zmq = print_table(zmq_rows(m), ["figure", "events/s", "of pyzmq"], title="Rail against raw pyzmq (medians)")
    main = print_table(summary_rows(m), ["workload", "rail", "redis", "ratio", "target", "result"],
                       title=f"Rail vs Redis, medians of {len(runs)} run(s), {sizes['events']:,} events of "
                             f"{SIZE} B; ratio = Rail's advantage")
    return f"`{command}`\n\n{main}\n{zmq}\n{per_run}"


# --- main ----------------------------------------------------------------------


def measured_run(sizes: dict[str, Any]) -> dict[str, dict[str, float]]:
    """one_run() plus how busy the shared machine was meanwhile."""
    stall = cpu_stall_us()
    with Timer() as timer:
        run = one_run(sizes)
    after = cpu_stall_us()
    run["machine"] = {"seconds": timer.elapsed, "load_avg_1m": os.getloadavg()[0]}
    if stall is not None and after is not None:
        run["machine"]["cpu_wait_pct"] = (after - stall) / 1e4 / timer.elapsed
    return run


def leftovers() -> list[str]:
    """Command lines of brokers and redis-servers this run started that still live."""
    found = subprocess.run(["pgrep", "-f", "brokerd|redis-server"], capture_output=True, text=True).stdout
    alive = {int(pid) for pid in found.split()} & set(STARTED)
    return [" ".join(psutil.Process(pid).cmdline()) for pid in alive if psutil.pid_exists(pid)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Rail against Redis Streams: W1 produce, W2 consume, W3 latency.")
    parser.add_argument("--quick", action="store_true", help="smoke test: 50,000 events, 2,000 paced, 1 run")
    parser.add_argument("--runs", type=int, help="runs to take medians over (default 3, quick 1)")
    parser.add_argument("--events", type=int, help="events for W1/W2 (default 1,000,000)")
    parser.add_argument("--markdown", help="also write the tables, as markdown, to this file")
    return parser.parse_args(argv)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds every `with`, so each process is stopped by pid


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sizes: dict[str, Any] = {
        "events": args.events or (50_000 if args.quick else 1_000_000),
        "latency": 2_000 if args.quick else 20_000,
        "rate": 5000.0,
    }
    runs = args.runs or (1 if args.quick else 3)
    command = "python bench/broker_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{command.strip()}: {runs} run(s); W3 producers {LATENCY_PRODUCERS}", flush=True)
    results = []
    try:
        for run in range(1, runs + 1):
            results.append(measured_run(sizes))
            print(f"run {run}/{runs} done: {results[-1]['machine']}", flush=True)
        md = report(results, sizes, command.strip())
        if args.markdown:
            Path(args.markdown).write_text(md)
    finally:
        left = leftovers()
        print("\nleft running: " + ("; ".join(left) if left else "nothing (no brokerd or redis-server of this run)"))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
