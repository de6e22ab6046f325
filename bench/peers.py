"""Real peers for Rail's benchmarks: raw disk, raw ZeroMQ, Redis Streams, Dramatiq.

Each workload returns a dict of figures (rates in events/s, MB = 10**6 bytes,
latencies in ms). Clients always run in processes separate from the servers;
every process started here is stopped by pid, also on errors.

Smoke test:  python bench/peers.py --quick
Full run:    python bench/peers.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

if __package__:
    from .common import (
        Child,
        Timer,
        free_port,
        latency_summary_ms,
        print_table,
        run_in_process,
        spawn,
        stop_popen,
        wait_until,
    )
else:  # run as a script, or imported with bench/ on sys.path
    from common import (
        Child,
        Timer,
        free_port,
        latency_summary_ms,
        print_table,
        run_in_process,
        spawn,
        stop_popen,
        wait_until,
    )

MIB = 1 << 20
MB = 1e6
FSYNC_POLICIES = ("everysec", "always", "no")


def _redis_client(port: int) -> Any:
    """A redis-py client on 127.0.0.1:port (hiredis parser when installed)."""
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2.0)


def _raw_reads_client(port: int) -> Any:
    """A client whose XREADGROUP returns hiredis' raw nested lists.

    [[stream, [[id, [field, value, ...]], ...]]]: redis-py otherwise builds a
    dict per entry, which costs the Python consumer ~25% of its throughput.
    """
    client = _redis_client(port)
    client.set_response_callback("XREADGROUP", lambda response, **options: response)
    return client


def _wait_ready_key(client: Any, ready_key: str, child: Child, timeout: float = 60.0) -> None:
    """Wait until `child` has set ready_key in Redis; fail fast if it died."""

    def ready() -> bool:
        child.ensure_alive()
        return bool(client.exists(ready_key))

    wait_until(ready, timeout, what=f"ready key {ready_key}")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- Redis server ------------------------------------------------------------


class RedisServer:
    """A private redis-server on a free loopback port with AOF in a temp dir.

    with RedisServer(appendfsync="always") as server:
        redis_produce(server.port)
    """

    def __init__(
        self,
        appendfsync: str = "everysec",
        data_parent: str | None = None,
        startup_timeout: float = 10.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if appendfsync not in FSYNC_POLICIES:
            raise ValueError(f"appendfsync must be one of {FSYNC_POLICIES}, not {appendfsync!r}")
        self.appendfsync = appendfsync
        self.data_parent = data_parent
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args
        self.port = 0
        self.dir = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "redis-server not started"
        return self._proc.pid

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", self.dir,
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            *self.extra_args,
        ]

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH; install it with: apt-get install redis-server")
        self.dir = tempfile.mkdtemp(prefix="rail-bench-redis-", dir=self.data_parent)
        self.port = free_port()
        self._log = open(os.path.join(self.dir, "redis.log"), "wb")
        try:
            self._proc = subprocess.Popen(
                self._command(binary), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import redis

        client = _redis_client(self.port)

        def answers_ping() -> bool:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False

        try:
            wait_until(answers_ping, self.startup_timeout, interval=0.02, what=f"redis-server PING on {self.port}")
        finally:
            client.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.dir, "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server by pid (SIGTERM, wait, SIGKILL) and remove its dir."""
        if self._proc is not None:
            stop_popen(self._proc, timeout=10.0)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- raw disk ----------------------------------------------------------------


def _write_file(path: str, total_mb: int) -> float:
    """Write total_mb MiB in 1 MiB writes, one fsync at the end; seconds taken."""
    block = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with Timer() as timer:
            for _ in range(total_mb):
                os.write(fd, block)
            os.fsync(fd)
    finally:
        os.close(fd)
    return timer.elapsed


def _read_file(path: str, drop_cache: bool) -> tuple[float, int]:
    """Read the file in 1 MiB reads; (seconds, bytes). drop_cache: fadvise DONTNEED first."""
    buf = bytearray(MIB)
    total = 0
    with open(path, "rb", buffering=0) as f:
        if drop_cache:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with Timer() as timer:
            while n := f.readinto(buf):
                total += n
    return timer.elapsed, total


def _fsync_loop(path: str, count: int, size: int = 4096) -> float:
    """count appends of size bytes, each followed by fdatasync; seconds taken."""
    block = os.urandom(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with Timer() as timer:
            for _ in range(count):
                os.write(fd, block)
                os.fdatasync(fd)
    finally:
        os.close(fd)
    return timer.elapsed


def raw_disk(path_dir: str, total_mb: int = 100, fsyncs: int = 2000) -> dict[str, Any]:
    """Sequential write/read MB/s and 4 KiB append+fdatasync rate in path_dir.

    "read_warm" reads straight after writing (page cache warm); "read_cold" reads
    after posix_fadvise(DONTNEED) dropped that file's pages.
    """
    data = os.path.join(path_dir, _unique("rail-bench-disk") + ".dat")
    log = os.path.join(path_dir, _unique("rail-bench-fsync") + ".log")
    try:
        write_s = _write_file(data, total_mb)
        warm_s, nbytes = _read_file(data, drop_cache=False)
        cold_s, _ = _read_file(data, drop_cache=True)
        fsync_s = _fsync_loop(log, fsyncs)
    finally:
        for path in (data, log):
            if os.path.exists(path):
                os.unlink(path)
    return {
        "peer": "disk",
        "workload": "raw",
        "write_mb_per_s": nbytes / write_s / MB,
        "read_warm_mb_per_s": nbytes / warm_s / MB,
        "read_cold_mb_per_s": nbytes / cold_s / MB,
        "fsyncs_per_s": fsyncs / fsync_s,
        "fsync_us": fsync_s / fsyncs * 1e6,
    }


# --- raw ZeroMQ --------------------------------------------------------------


def _zmq_pull_child(port: int, frames: int) -> dict[str, float]:
    """Bind PULL, take one warm-up frame, then time the receipt of `frames` frames."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    try:
        sock.bind(f"tcp://127.0.0.1:{port}")
        sock.recv(copy=False)  # warm-up: the connection is up from here on
        nbytes = 0
        with Timer() as timer:
            for _ in range(frames):
                nbytes += len(sock.recv(copy=False))
        return {"seconds": timer.elapsed, "bytes": nbytes}
    finally:
        sock.close(linger=0)
        ctx.term()


def _zmq_push_child(port: int, frames: int, frame_bytes: int) -> None:
    """Connect PUSH and send a warm-up frame plus `frames` frames of frame_bytes."""
    import zmq

    blob = b"e" * frame_bytes
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        for _ in range(frames + 1):
            sock.send(blob, copy=False)
    finally:
        sock.close(linger=30_000)
        ctx.term()


def raw_zmq_pushpull(n_events: int = 1_000_000, per_frame: int = 1000, size: int = 100) -> dict[str, Any]:
    """PUSH and PULL in two processes over loopback TCP, per_frame events per frame."""
    frames = max(1, n_events // per_frame)
    port = free_port()
    with spawn(_zmq_pull_child, port, frames) as pull, spawn(_zmq_push_child, port, frames, per_frame * size) as push:
        figures = pull.result(timeout=300.0)
        push.result(timeout=60.0)
    events = frames * per_frame
    return {
        "peer": "pyzmq",
        "workload": f"push/pull {per_frame}/frame",
        "events": events,
        "seconds": figures["seconds"],
        "events_per_s": events / figures["seconds"],
        "mb_per_s": figures["bytes"] / figures["seconds"] / MB,
    }


# --- Redis Streams -----------------------------------------------------------


def _xadd_batches(port: int, key: str, n: int, size: int, pipeline: int) -> float:
    """XADD n values of `size` bytes in non-transactional pipelines; seconds taken.

    Sends the raw command: redis-py's xadd() argument building costs the Python
    client (the bottleneck here) ~10% more and the server nothing.
    """
    client = _redis_client(port)
    value = b"v" * size
    try:
        with Timer() as timer:
            for start in range(0, n, pipeline):
                pipe = client.pipeline(transaction=False)
                for _ in range(min(pipeline, n - start)):
                    pipe.execute_command("XADD", key, "*", "d", value)
                pipe.execute()
        return timer.elapsed
    finally:
        client.close()


def _drain_group(port: int, key: str, n: int, count: int) -> float:
    """One consumer reads the group with XREADGROUP COUNT, XACKs each batch; seconds."""
    client = _raw_reads_client(port)
    try:
        client.xgroup_create(key, "g", id="0")
        got = 0
        with Timer() as timer:
            while got < n:
                reply = client.xreadgroup("g", "c", {key: ">"}, count=count)
                if not reply:
                    raise RuntimeError(f"stream {key} ran dry after {got} of {n} events")
                ids = [entry_id for entry_id, _ in reply[0][1]]
                client.xack(key, "g", *ids)
                got += len(ids)
        return timer.elapsed
    finally:
        client.close()


def _delete_key(port: int, key: str) -> None:
    client = _redis_client(port)
    try:
        client.delete(key)
    finally:
        client.close()


def _stream_row(workload: str, n: int, seconds: float, size: int) -> dict[str, Any]:
    return {
        "peer": "redis",
        "workload": workload,
        "events": n,
        "seconds": seconds,
        "events_per_s": n / seconds,
        "mb_per_s": n * size / seconds / MB,
    }


def redis_produce(port: int, n: int = 1_000_000, size: int = 100, pipeline: int = 1000) -> dict[str, Any]:
    """XADD n `size`-byte values to one stream, pipelines of `pipeline`; events/s."""
    key = _unique("bench-produce")
    try:
        seconds = run_in_process(_xadd_batches, port, key, n, size, pipeline)
    finally:
        _delete_key(port, key)
    return _stream_row(f"produce xadd pipe={pipeline}", n, seconds, size)


def redis_consume(port: int, n: int = 1_000_000, size: int = 100, count: int = 1000) -> dict[str, Any]:
    """Prefill n events (untimed), then one group consumer reads COUNT `count` + XACK."""
    key = _unique("bench-consume")
    try:
        run_in_process(_xadd_batches, port, key, n, size, 1000)
        seconds = run_in_process(_drain_group, port, key, n, count)
    finally:
        _delete_key(port, key)
    return _stream_row(f"consume xreadgroup count={count}+xack", n, seconds, size)


_STAMP = struct.Struct("<q")


def _paced_producer(port: int, key: str, n: int, rate: float, size: int) -> dict[str, float]:
    """XADD one event at a time at `rate`/s against absolute deadlines (no drift)."""
    client = _redis_client(port)
    padding = b"p" * max(0, size - _STAMP.size)
    interval = 1.0 / rate
    try:
        start = time.monotonic()
        for i in range(n):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            client.xadd(key, {b"d": _STAMP.pack(time.time_ns()) + padding})
        elapsed = time.monotonic() - start
        return {"seconds": elapsed, "achieved_rate": n / elapsed}
    finally:
        client.close()


def _latency_consumer(port: int, key: str, n: int, ready_key: str, timeout: float) -> dict[str, float]:
    """Block on XREADGROUP; per event, receipt time minus the send stamp inside it."""
    client = _raw_reads_client(port)
    latencies: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        client.set(ready_key, 1)
        while len(latencies) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"latency consumer got {len(latencies)} of {n} events")
            reply = client.xreadgroup("g", "c", {key: ">"}, count=1000, block=1000)
            now = time.time_ns()
            if not reply:
                continue
            entries = reply[0][1]
            latencies.extend(now - _STAMP.unpack_from(fields[1])[0] for _, fields in entries)
            client.xack(key, "g", *(entry_id for entry_id, _ in entries))
        return latency_summary_ms(latencies)
    finally:
        client.close()


def redis_latency(port: int, n: int = 20_000, rate: float = 5000, size: int = 100) -> dict[str, Any]:
    """End-to-end latency: paced producer process -> Redis -> blocking group consumer."""
    key, ready_key = _unique("bench-latency"), _unique("bench-ready")
    client = _redis_client(port)
    try:
        client.xgroup_create(key, "g", id="0", mkstream=True)
        timeout = n / rate * 2 + 60.0
        with spawn(_latency_consumer, port, key, n, ready_key, timeout) as consumer:
            _wait_ready_key(client, ready_key, consumer)
            time.sleep(0.05)  # let the consumer enter its blocking read
            with spawn(_paced_producer, port, key, n, rate, size) as producer:
                sent = producer.result(timeout)
                summary = consumer.result(timeout)
    finally:
        client.delete(key, ready_key)
        client.close()
    return {
        "peer": "redis",
        "workload": f"latency xadd@{rate:g}/s -> xreadgroup block",
        "events": n,
        "rate": rate,
        "achieved_rate": sent["achieved_rate"],
        **summary,
    }


# --- Dramatiq ----------------------------------------------------------------

_COUNTER_CLIENT: Any = None  # the worker process's Redis client for the no-op task
_DRAMATIQ_ACTOR = "rail_bench_noop"


def _dramatiq_noop(counter_key: str) -> None:
    """The trivial task: count one completion."""
    _COUNTER_CLIENT.incr(counter_key)


def _dramatiq_actor(port: int, queue: str) -> Any:
    """A RedisBroker on port and the no-op actor declared on it."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(host="127.0.0.1", port=port)
    dramatiq.set_broker(broker)
    declare = dramatiq.actor(actor_name=_DRAMATIQ_ACTOR, queue_name=queue, broker=broker, max_retries=0)
    return declare(_dramatiq_noop)


def _dramatiq_worker_child(port: int, queue: str, ready_key: str, threads: int, prefetch: int) -> None:
    """One Dramatiq worker process with `threads` threads; runs until SIGTERM."""
    import dramatiq

    global _COUNTER_CLIENT
    _COUNTER_CLIENT = _redis_client(port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    actor = _dramatiq_actor(port, queue)
    worker = dramatiq.Worker(actor.broker, worker_threads=threads, worker_timeout=100)
    if prefetch:
        worker.queue_prefetch = prefetch  # what the dramatiq_queue_prefetch env var sets
    worker.start()
    try:
        _COUNTER_CLIENT.set(ready_key, 1)
        stop.wait()
    finally:
        worker.stop(timeout=5000)
        actor.broker.close()


def _dramatiq_enqueue_child(port: int, queue: str, counter_key: str, n: int) -> dict[str, float]:
    """Send n messages; monotonic times (system-wide on Linux) of first and last send."""
    actor = _dramatiq_actor(port, queue)
    try:
        first = time.monotonic()
        for _ in range(n):
            actor.send(counter_key)
        return {"first": first, "last": time.monotonic()}
    finally:
        actor.broker.close()


def _wait_count(client: Any, key: str, n: int, worker: Child, timeout: float) -> float:
    """Poll the completion counter until it reaches n; monotonic time it was seen."""

    def all_done() -> bool:
        worker.ensure_alive()
        return int(client.get(key) or 0) >= n

    wait_until(all_done, timeout, interval=0.002, what=f"{n} dramatiq tasks")
    return time.monotonic()


def dramatiq_trivial(port: int, n: int = 20_000, threads: int = 8, prefetch: int = 0) -> dict[str, Any]:
    """No-op Dramatiq tasks over Redis (server on `port`, started by the caller).

    One worker process with `threads` threads; throughput from the first enqueue
    to the n-th completion, counted by an INCR inside the task. threads=8 is
    Dramatiq's CLI default; prefetch=0 keeps its default (2 x threads). Measured
    here: 1 thread ~260/s, 8 threads ~1.8k/s, 8 threads + prefetch 100 ~2.2k/s,
    where the enqueueing process (Dramatiq's send, one Lua call each) bounds it.
    """
    queue, counter_key, ready_key = _unique("railbench"), _unique("bench-done"), _unique("bench-ready")
    client = _redis_client(port)
    timeout = max(120.0, n / 200)
    try:
        with spawn(_dramatiq_worker_child, port, queue, ready_key, threads, prefetch) as worker:
            _wait_ready_key(client, ready_key, worker)
            with spawn(_dramatiq_enqueue_child, port, queue, counter_key, n) as enqueue:
                done = _wait_count(client, counter_key, n, worker, timeout)
                sent = enqueue.result(timeout)
    finally:
        client.delete(counter_key, ready_key)
        client.close()
    seconds = done - sent["first"]
    return {
        "peer": "dramatiq",
        "workload": f"no-op task, 1 proc x {threads} threads",
        "events": n,
        "seconds": seconds,
        "events_per_s": n / seconds,
        "enqueue_per_s": n / (sent["last"] - sent["first"]),
    }


# --- smoke test / full run ---------------------------------------------------

QUICK = {"disk_mb": 20, "fsyncs": 200, "zmq": 100_000, "produce": 50_000, "consume": 50_000,
         "latency": 2_000, "dramatiq": 2_000}
FULL = {"disk_mb": 100, "fsyncs": 2_000, "zmq": 1_000_000, "produce": 1_000_000, "consume": 1_000_000,
        "latency": 20_000, "dramatiq": 20_000}
WORKLOADS = ("disk", "zmq", "produce", "consume", "latency", "dramatiq")


def _run_redis(workload: str, fsync: str, sizes: dict[str, int]) -> dict[str, Any]:
    """One workload against a fresh RedisServer with the given appendfsync."""
    with RedisServer(appendfsync=fsync) as server:
        if workload == "produce":
            row = redis_produce(server.port, n=sizes["produce"])
        elif workload == "consume":
            row = redis_consume(server.port, n=sizes["consume"])
        elif workload == "latency":
            row = redis_latency(server.port, n=sizes["latency"])
        else:
            row = dramatiq_trivial(server.port, n=sizes["dramatiq"])
    row["fsync"] = fsync
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run each benchmark peer once and print its figures.")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma list of {','.join(WORKLOADS)}")
    parser.add_argument("--fsync", default="everysec,always", help="Redis appendfsync policies to run")
    parser.add_argument("--disk-dir", default=tempfile.gettempdir(), help="directory for the raw disk test")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    only = args.only.split(",")
    rows: list[dict[str, Any]] = []

    if "disk" in only:
        disk = raw_disk(args.disk_dir, total_mb=sizes["disk_mb"], fsyncs=sizes["fsyncs"])
        print_table([disk], ["write_mb_per_s", "read_warm_mb_per_s", "read_cold_mb_per_s", "fsyncs_per_s", "fsync_us"],
                    title=f"raw disk ({args.disk_dir})")
    if "zmq" in only:
        rows.append(raw_zmq_pushpull(n_events=sizes["zmq"]))
    for fsync in args.fsync.split(","):
        for workload in ("produce", "consume", "latency", "dramatiq"):
            if workload in only and (workload != "dramatiq" or fsync == args.fsync.split(",")[0]):
                rows.append(_run_redis(workload, fsync, sizes))
    if rows:
        print_table(rows, ["peer", "workload", "fsync", "events", ("events_per_s", "events/s"), ("mb_per_s", "MB/s"),
                           ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"), "seconds"],
                    title="peers" + (" (quick)" if args.quick else ""))


if __name__ == "__main__":
    main()
