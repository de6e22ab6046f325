"""Redis Streams beside Rail in the scale benchmark: the same work on as many streams.

``redis_streams`` holds N streams: keyed XADD pipelined to the stream each key hashes to
(Rail's CRC-32), then one XREADGROUP consumer over all of them, Redis' CPU per entry, RSS,
idle CPU, and the restart after kill -9 (AOF everysec).  ``redis_groups`` drains a few
streams with N consumer groups.  The client functions run in processes of their own
(``common.spawn``); every redis-server is started on a free port in a temp dir and stopped
by pid (``peers.RedisServer``), its pid kept in ``scale_broker.STARTED``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if __package__:
    from .common import run_in_process, spawn
    from .peers import RedisServer
    from .scale_broker import STARTED, schedstat_cpu_s
else:  # run as a script, or imported with bench/ on sys.path
    from common import run_in_process, spawn
    from peers import RedisServer
    from scale_broker import STARTED, schedstat_cpu_s

from brokerd import protocol as p  # noqa: E402

REDIS_PIPELINE = 1000
REDIS_KEYS_PER_READ = 1000  # stream keys per XREADGROUP call
REDIS_IDLE_S = 3.0
TIMEOUT_S = 900.0


# --- clients (each in a process of its own) ------------------------------------------


def _redis(port: int) -> Any:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=5.0)
    client.set_response_callback("XREADGROUP", lambda response, **options: response)
    return client


def redis_create_groups(port: int, keys: list[str], groups: list[str]) -> None:
    """XGROUP CREATE ... 0 MKSTREAM for each group on each key (pipelined, untimed)."""
    client = _redis(port)
    try:
        for group in groups:
            for start in range(0, len(keys), REDIS_PIPELINE):
                pipe = client.pipeline(transaction=False)
                for key in keys[start:start + REDIS_PIPELINE]:
                    pipe.execute_command("XGROUP", "CREATE", key, group, "0", "MKSTREAM")
                pipe.execute()
    finally:
        client.close()


def redis_keyed_produce(port: int, keys: list[str], n: int, size: int) -> dict[str, Any]:
    """XADD n events, event i with key b"k<i>" to the stream its key hashes to (Rail's
    hash), in pipelines of REDIS_PIPELINE; seconds."""
    client = _redis(port)
    value = b"v" * size
    count = len(keys)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, n, REDIS_PIPELINE):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(n, start + REDIS_PIPELINE)):
                key = b"k%d" % i
                pipe.execute_command("XADD", keys[p.partition_for_key(key, count)], "*", "k", key, "d", value)
            pipe.execute()
        return {"seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}
    finally:
        client.close()


def redis_group_consume(port: int, keys: list[str], n: int, group: str) -> dict[str, Any]:
    """One consumer of ``group`` reads n entries over all ``keys``: XREADGROUP COUNT 1000
    over REDIS_KEYS_PER_READ keys a call, XACK of what each call returned (pipelined)."""
    client = _redis(port)
    try:
        got = 0
        started, cpu = time.perf_counter(), time.process_time()
        while got < n:
            progress = 0
            for start in range(0, len(keys), REDIS_KEYS_PER_READ):
                chunk = keys[start:start + REDIS_KEYS_PER_READ]
                reply = client.xreadgroup(group, "c", dict.fromkeys(chunk, ">"), count=1000)
                if not reply:
                    continue
                pipe = client.pipeline(transaction=False)
                for stream, entries in reply:
                    ids = [entry_id for entry_id, _ in entries]
                    pipe.xack(stream, group, *ids)
                    progress += len(ids)
                pipe.execute()
            if not progress:
                raise RuntimeError(f"redis group {group} ran dry after {got} of {n} entries")
            got += progress
        return {"seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "events": got}
    finally:
        client.close()


# --- servers and points -----------------------------------------------------------


def _redis_restart(server: RedisServer) -> float:
    """SIGKILL redis-server, start it on the same dir and port; seconds to PONG (it answers
    LOADING until the AOF is read).  RedisServer has no public restart: its internals."""
    os.kill(server.pid, signal.SIGKILL)
    assert server._proc is not None
    server._proc.wait(30)
    binary = shutil.which("redis-server") or "redis-server"
    started = time.perf_counter()
    server._proc = subprocess.Popen(server._command(binary), stdin=subprocess.DEVNULL, stdout=server._log,
                                    stderr=subprocess.STDOUT)
    STARTED.append(server.pid)
    server._wait_ready()
    return time.perf_counter() - started


def _redis_idle_pct(pid: int) -> float:
    before, started = schedstat_cpu_s(pid), time.perf_counter()
    time.sleep(REDIS_IDLE_S)
    return (schedstat_cpu_s(pid) - before) / (time.perf_counter() - started) * 100


def redis_streams(count: int, n: int, size: int) -> dict[str, Any]:
    """``count`` streams (AOF everysec): keyed XADD of n entries, one group consumer."""
    keys = [f"s{i}" for i in range(count)]
    out: dict[str, Any] = {}
    with RedisServer(appendfsync="everysec") as server:
        STARTED.append(server.pid)
        run_in_process(redis_create_groups, server.port, keys, ["g"], timeout=TIMEOUT_S)
        cpu = schedstat_cpu_s(server.pid)
        produced = run_in_process(redis_keyed_produce, server.port, keys, n, size, timeout=TIMEOUT_S)
        out.update(produce=n / produced["seconds"], produce_us=(schedstat_cpu_s(server.pid) - cpu) / n * 1e6,
                   produce_client_us=produced["cpu_s"] / n * 1e6)
        cpu = schedstat_cpu_s(server.pid)
        consumed = run_in_process(redis_group_consume, server.port, keys, n, "g", timeout=TIMEOUT_S)
        out.update(consume=n / consumed["seconds"], consume_us=(schedstat_cpu_s(server.pid) - cpu) / n * 1e6,
                   consume_client_us=consumed["cpu_s"] / n * 1e6)
        time.sleep(1.0)  # the everysec fsync
        process = psutil.Process(server.pid)
        out.update(idle_cpu_pct=_redis_idle_pct(server.pid), rss_mb=process.memory_info().rss / 2**20,
                   fds=process.num_fds())
        out["restart_s"] = _redis_restart(server)
    return out


def redis_groups(count: int, per_group: int, streams: int, size: int) -> dict[str, Any]:
    """``count`` consumer groups on ``streams`` streams of per_group entries; each group read whole
    by one consumer, one group after the other (Redis runs commands one at a time anyway)."""
    keys = [f"s{i}" for i in range(streams)]
    groups = [f"g{i}" for i in range(count)]
    with RedisServer(appendfsync="everysec") as server:
        STARTED.append(server.pid)
        run_in_process(redis_create_groups, server.port, keys, groups, timeout=TIMEOUT_S)
        run_in_process(redis_keyed_produce, server.port, keys, per_group, size, timeout=TIMEOUT_S)
        cpu = schedstat_cpu_s(server.pid)
        with spawn(_redis_drain_groups, server.port, keys, per_group, groups) as child:
            seconds = child.result(TIMEOUT_S)
        events = count * per_group
        return {"consume": events / seconds, "consume_us": (schedstat_cpu_s(server.pid) - cpu) / events * 1e6,
                "rss_mb": psutil.Process(server.pid).memory_info().rss / 2**20}


def _redis_drain_groups(port: int, keys: list[str], per_group: int, groups: list[str]) -> float:
    started = time.perf_counter()
    for group in groups:
        redis_group_consume(port, keys, per_group, group)
    return time.perf_counter() - started
