"""Rail's own processes as the runtime benchmark starts them, and a view of the broker.

``popen`` and ``RailUp`` remember every pid they start (or see started for them) in
``STARTED``; ``leftovers`` lists what of it is still alive at the end.  Nothing here is
thread-safe; the benchmark's main thread owns it all.
"""

from __future__ import annotations

import os
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
    from .common import stop_popen, wait_until
else:  # run as a script, or imported with bench/ on sys.path
    from common import stop_popen, wait_until

from brokerd import protocol as p  # noqa: E402
from runtime.connection import BrokerError, Connection  # noqa: E402

COMMIT_POLL_S = 0.005  # how often the bench asks describe_group whether the last commit came
STARTED: dict[int, float] = {}  # pid -> start time of every process this run started or saw started


def remember(pid: int) -> None:
    """Note ``pid`` as this run's, with its start time (so a reused pid is not mistaken for it)."""
    try:
        STARTED.setdefault(pid, psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        pass


def popen(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start argv in ROOT with its output to ``log``; remember its pid."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    remember(proc.pid)
    return proc


def worker_argv(script: Path, api: str, group: str, topic: str) -> list[str]:
    return [sys.executable, "-m", "runtime.worker", str(script), "--broker", api,
            "--group", group, "--topics", topic, "--name", group]


class RailUp:
    """``rail up -c FILE`` (python -m runtime.cli up) with a rail.toml written here."""

    def __init__(self, folder: Path, toml: str, env: dict[str, str], broker: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.file = folder / "rail.toml"
        self.file.write_text(toml)
        argv = [sys.executable, "-m", "runtime.cli", "up", "-c", str(self.file)]
        self.proc = popen(argv + (["--broker", broker] if broker else []), folder / "up.log", env)

    def children(self) -> list[psutil.Process]:
        """The supervisor's live children (broker, workers); their pids are remembered."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        for kid in kids:
            remember(kid.pid)
        return kids

    def worker(self, member_id: str) -> psutil.Process | None:
        for kid in self.children():
            try:
                if member_id in kid.cmdline():
                    return kid
            except psutil.NoSuchProcess:
                continue
        return None

    def stop(self) -> None:
        kids = self.children()
        stop_popen(self.proc, timeout=30.0)
        for kid in kids:  # their parent-death signal should have done it already
            try:
                if kid.status() != psutil.STATUS_ZOMBIE:
                    kid.kill()
            except psutil.NoSuchProcess:
                pass


class BrokerView:
    """Describe groups and topics of a broker; reconnects after a timeout."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.conn = Connection(api, timeout_s=2.0)

    def call(self, request: Any) -> Any:
        try:
            return self.conn.call(request)
        except BrokerError as exc:
            if exc.code == "UNAVAILABLE":  # a late reply must not answer the next request
                self.conn.close()
                self.conn = Connection(self.api, timeout_s=2.0)
            raise

    def ends(self, topic: str) -> dict[tuple[str, int], int]:
        meta = self.call(p.Metadata(topics=[topic]))
        return {(topic, part.partition): part.end_offset for part in meta.topics[0].partitions}

    def committed_all(self, group: str, ends: dict[tuple[str, int], int]) -> bool:
        reply = self.call(p.DescribeGroup(group=group))
        done = {(x.topic, x.partition): x.committed or 0 for x in reply.partitions}
        return all(done.get(tp, 0) >= end for tp, end in ends.items())

    def members(self, group: str) -> int:
        try:
            reply = self.call(p.DescribeGroup(group=group))
        except BrokerError:
            return 0
        return sum(1 for m in reply.members if m.assignment)

    def wait_committed(self, group: str, ends: dict[tuple[str, int], int], timeout: float,
                       alive: Any = lambda: None) -> float:
        """Poll until ``group`` committed every end offset; the monotonic time it was seen."""
        def done() -> bool:
            alive()
            return self.committed_all(group, ends)

        wait_until(done, timeout, interval=COMMIT_POLL_S, what=f"group {group} to commit {ends}")
        return time.monotonic()

    def close(self) -> None:
        self.conn.close()


def first_event(folder: Path) -> float:
    """The earliest first-event time the handlers wrote in ``folder``."""
    return min(float(f.read_text()) for f in folder.glob("*.first"))


def ensure_running(proc: subprocess.Popen[bytes], what: str) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited early with code {proc.returncode}")


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of every thread of ``proc`` so far: ns-exact from /proc/PID/task/*/schedstat
    (psutil's cpu_times count 10 ms ticks, too coarse for a few idle seconds)."""
    try:
        tasks = Path(f"/proc/{proc.pid}/task").iterdir()
        return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks) / 1e9
    except (OSError, ValueError):
        return float(sum(proc.cpu_times()[:2]))


def role(proc: psutil.Process) -> str:
    argv = proc.cmdline()
    return "workers" if "runtime.worker" in argv else "broker" if "brokerd" in argv else "supervisor"


def stop_resource_tracker() -> None:
    """Stop multiprocessing's helper process (started by the first spawn); it would only
    exit with this process otherwise."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)  # private: no public stop
    if stop is not None:
        stop()


def still_ours(pid: int, started: float) -> bool:
    try:
        return psutil.Process(pid).create_time() == started
    except psutil.NoSuchProcess:
        return False


def leftovers(folder: Path) -> list[str]:
    """Processes of this run still alive: pgrep on the run folder, started pids, children."""
    found = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout
    pids = {int(pid) for pid in found.split()} | {pid for pid, t in STARTED.items() if still_ours(pid, t)}
    pids |= {kid.pid for kid in psutil.Process().children(recursive=True)}
    alive = []
    for pid in sorted(pids - {os.getpid()}):
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and "pgrep" not in proc.name():
                alive.append(f"{pid} {' '.join(proc.cmdline())[:160]}")
        except psutil.NoSuchProcess:
            pass
    return alive
