"""The pizzeria under ``rail up``, for the runtime benchmark: idle memory and CPU, restarts.

``rail up`` starts its own broker and the pizzeria's stations (pizza x2, pasta, drinks,
tally: examples/pizzeria/workers, copied into the run folder) plus bench/trivial_worker.py
stamping each event (ticks x2, on 2 partitions).  After the orders are handled and the
tree is idle, it measures RSS and CPU; then, while one event arrives every TICK_S, kills
each ticks replica in turn and times its successor's first handled event.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

if __package__:
    from .common import free_port, spawn, wait_until
    from .processes import ROOT, BrokerView, RailUp, cpu_seconds, ensure_running, popen, role
else:  # run as a script, or imported with bench/ on sys.path
    from common import free_port, spawn, wait_until
    from processes import ROOT, BrokerView, RailUp, cpu_seconds, ensure_running, popen, role

from tests.helpers import python_env  # noqa: E402

TICK_S = 0.010  # the restart test's event interval
PIZZERIA = ROOT / "examples" / "pizzeria"
STATIONS = {"pizza": ("orders", 2), "pasta": ("orders", 1), "drinks": ("orders", 1),
            "tally": ("kitchen.done", 1)}
MB = 2**20


def _paced(api: str, topic: str, partitions: int, interval: float, limit_s: float) -> int:
    """One event every ``interval`` s (absolute deadlines), partitions in turn, up to limit_s."""
    from runtime.client import Producer

    with Producer(api) as producer:
        start, i = time.monotonic(), 0
        while time.monotonic() - start < limit_s:
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(topic, b"tick", partition=i % partitions)
            i += 1
        return i


def pizzeria_toml(workers: Path, script: Path, api: int, ingest: int, control_ep: str) -> str:
    lines = ['[broker]', 'data_dir = "data"', f'bind = "tcp://127.0.0.1:{api}"',
             f'ingest = "tcp://127.0.0.1:{ingest}"', '', '[supervisor]', f'control = "{control_ep}"',
             '', '[topics.orders]', 'partitions = 3', '[topics."kitchen.done"]', 'partitions = 3',
             '[topics.ticks]', 'partitions = 2', '']
    for name, (topic, replicas) in STATIONS.items():
        lines += [f'[workers.{name}]', f'script = "{workers / name}.py"', f'topics = ["{topic}"]',
                  f'replicas = {replicas}', '']
    lines += ['[workers.ticks]', f'script = "{script}"', 'topics = ["ticks"]', 'replicas = 2', '']
    return "\n".join(lines)


def pizzeria_session(folder: Path, script: Path, idle_s: float, orders: int) -> dict[str, Any]:
    """The pizzeria under rail up: idle RSS and CPU after orders, then restart latency."""
    shutil.copytree(PIZZERIA / "workers", folder / "workers")  # so every argv names the run folder
    stamps = folder / "stamps"
    stamps.mkdir(parents=True)
    api, ingest = free_port(), free_port()
    toml = pizzeria_toml(folder / "workers", script, api, ingest, f"tcp://127.0.0.1:{free_port()}")
    env = {**python_env(), "RAIL_BENCH_STAMPS": str(stamps), "RAIL_TALLY_PATH": str(folder / "tally.json")}
    up = RailUp(folder, toml, env)
    broker = BrokerView(f"tcp://127.0.0.1:{api}")
    try:
        groups = {**{name: replicas for name, (_, replicas) in STATIONS.items()}, "ticks": 2}

        def joined() -> bool:
            ensure_running(up.proc, "rail up")
            return all(broker.members(g) == r for g, r in groups.items())

        wait_until(joined, 60.0, interval=0.1, what="every worker to join")
        take_orders(broker, folder, orders)
        out: dict[str, Any] = dict(idle_figures(up, idle_s))
        out["restarts"] = restart_latencies(up, broker, stamps, kills=2)
        return out
    finally:
        broker.close()
        up.stop()


def take_orders(broker: BrokerView, folder: Path, orders: int) -> None:
    """hall.py sends the orders; wait until every station and the tally committed them all."""
    hall = popen([sys.executable, str(PIZZERIA / "hall.py"), "--broker", broker.api, "--orders", str(orders),
                  "--expected", str(folder / "expected.json")], folder / "hall.log", python_env())
    if hall.wait(60.0) != 0:
        raise RuntimeError(f"hall.py failed: see {folder / 'hall.log'}")

    def all_handled() -> bool:
        stations = all(broker.committed_all(g, broker.ends("orders")) for g in ("pizza", "pasta", "drinks"))
        return stations and broker.committed_all("tally", broker.ends("kitchen.done"))

    wait_until(all_handled, 60.0, interval=0.1, what="the kitchen to handle every order")


def idle_figures(up: RailUp, seconds: float) -> dict[str, float]:
    """RSS of the supervisor and its children, and the CPU they use while idle (% of a core)."""
    time.sleep(1.0)  # the last commits and health reports go out; then nothing should
    tree = [psutil.Process(up.proc.pid), *up.children()]
    before = [cpu_seconds(proc) for proc in tree]
    time.sleep(seconds)
    busy = {"supervisor": 0.0, "broker": 0.0, "workers": 0.0}
    for proc, start in zip(tree, before):
        busy[role(proc)] += cpu_seconds(proc) - start
    rss = {proc.pid: proc.memory_info().rss / MB for proc in tree}
    workers = [rss[proc.pid] for proc in tree if role(proc) == "workers"]
    out = {f"{name}_cpu_pct": cpu / seconds * 100 for name, cpu in busy.items()}
    out.update(tree_cpu_pct=sum(busy.values()) / seconds * 100, tree_procs=len(tree), sup_rss=rss[tree[0].pid],
               worker_rss_max=max(workers), worker_rss_min=min(workers),
               broker_rss=sum(rss[proc.pid] for proc in tree if role(proc) == "broker"))
    return out


def restart_latencies(up: RailUp, broker: BrokerView, stamps: Path, kills: int) -> list[dict[str, float]]:
    """SIGKILL ticks-0, ticks-1, ... in turn while events arrive every TICK_S."""
    samples = []
    with spawn(_paced, broker.api, "ticks", 2, TICK_S, 120.0) as producer:

        def both_handling() -> bool:
            producer.ensure_alive()
            return sum(1 for f in stamps.glob("*.stamps") if f.stat().st_size) >= 2

        wait_until(both_handling, 30.0, what="both stamping workers to handle events")
        for i in range(kills):
            samples.append(kill_and_time(up, f"ticks-{i % 2}", stamps))
            producer.ensure_alive()
    return samples


def kill_and_time(up: RailUp, member_id: str, stamps: Path) -> dict[str, float]:
    """Kill the process of ``member_id``; ms until its successor exists and handles an event."""
    old = up.worker(member_id)
    assert old is not None, f"no process for {member_id}"
    killed_at = time.monotonic()
    os.kill(old.pid, signal.SIGKILL)

    def successor() -> psutil.Process | None:
        new = up.worker(member_id)
        return new if new is not None and new.pid != old.pid else None

    wait_until(lambda: successor() is not None, 10.0, interval=0.002, what=f"{member_id} restarted")
    spawned_at = time.monotonic()
    new = successor()
    assert new is not None
    path = stamps / f"{new.pid}.stamps"
    wait_until(lambda: path.exists() and path.read_text().endswith("\n"), 10.0, what=f"{member_id}'s first event")
    first = float(path.read_text().split()[0])
    return {"spawn_ms": (spawned_at - killed_at) * 1000, "first_event_ms": (first - killed_at) * 1000}
