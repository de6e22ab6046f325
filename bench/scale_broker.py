"""One broker under the scale benchmark, seen from outside: started, killed, started again.

``ScaleBroker`` runs ``python -m brokerd`` on two free loopback ports with its data in a
folder of the caller's, and measures it through psutil, ``/proc`` and the wire: CPU time,
RSS, open descriptors, ``stats`` counters, and how long a request takes.  ``kill9_restart``
sends SIGKILL and starts a new broker on the same data and ports, timed from ``Popen`` to
the first ``ping`` reply.  Every pid started is kept in ``STARTED`` so the benchmark can
check at its end that none is left.  Not thread-safe: the benchmark's main thread owns it.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if __package__:
    from .common import free_port, median, stop_popen
else:  # run as a script, or imported with bench/ on sys.path
    from common import free_port, median, stop_popen

from brokerd import protocol as p  # noqa: E402
from runtime.connection import Connection, check  # noqa: E402

_replies = msgspec.msgpack.Decoder(p.Reply)

STARTED: list[int] = []  # every brokerd and redis-server pid this run started
READY_TIMEOUT_S = 60.0  # 10,000 partitions open in ~3 s; a loaded machine gets room


def schedstat_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` so far, ns-exact (/proc/PID/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that just ended
            continue
    return total / 1e9


def psutil_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (psutil; 10 ms ticks)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class ScaleBroker:
    """``python -m brokerd`` with its data in ``folder/data``; stop it with ``stop()``."""

    def __init__(self, folder: Path, nofile: int | None = None) -> None:
        self.folder = folder
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) for the broker; None: inherit
        folder.mkdir(parents=True, exist_ok=True)
        self.api = f"tcp://127.0.0.1:{free_port()}"
        self.ingest = f"tcp://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[str] | None = None
        self.conn: Connection | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "broker not started"
        return self.proc.pid

    def start(self) -> float:
        """Start the broker; return the seconds from ``Popen`` to its first ``ping`` reply."""
        self._close_conn()
        self._close_stdout()
        argv = [sys.executable, "-m", "brokerd", "--data-dir", str(self.folder / "data"),
                "--bind", self.api, "--ingest", self.ingest, "--log-level", "WARNING"]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.folder / "broker.log", "ab") as log:
            started = time.perf_counter()
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=log, text=True,
                                         preexec_fn=self._limit_files if self.nofile else None)
        STARTED.append(self.proc.pid)
        try:
            self._wait_ready_line(started + READY_TIMEOUT_S)
            self.conn = Connection(self.api, timeout_s=60.0)
            self.conn.call(p.Ping(), timeout_s=max(1.0, started + READY_TIMEOUT_S - time.perf_counter()))
        except BaseException:
            self.stop()
            raise
        return time.perf_counter() - started

    def _limit_files(self) -> None:
        """In the child before exec: its open-files limit (raising the hard one needs root)."""
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def death_note(self) -> str | None:
        """None while the broker runs; else its exit code and the last lines it logged."""
        if self.proc is None or self.proc.poll() is None:
            return None
        lines = [line for line in self.log_tail(4000).splitlines() if line.strip(" ^~\t")]
        return f"brokerd exited with code {self.proc.returncode}: " + " / ".join(lines[-2:])[-400:]  # no "|": it ends up in markdown tables

    def _wait_ready_line(self, deadline: float) -> None:
        """Read stdout, bounded, until ``brokerd ready ...``."""
        assert self.proc is not None and self.proc.stdout is not None
        while time.perf_counter() < deadline:
            readable, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if readable:
                line = self.proc.stdout.readline()
                if line.startswith("brokerd ready"):
                    return
                if not line:
                    break
        raise RuntimeError(f"brokerd did not become ready (exit {self.proc.poll()}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.folder / "broker.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill9_restart(self) -> float:
        """SIGKILL the broker, start it again on the same data; seconds to its first ping."""
        assert self.proc is not None
        self._close_conn()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._close_stdout()
        return self.start()

    # -- what it costs ------------------------------------------------------------
    def cpu_s(self) -> float:
        return schedstat_cpu_s(self.pid)

    def idle_cpu_pct(self, seconds: float) -> float:
        """CPU while nobody asks anything (psutil cpu_times delta), % of one core."""
        before = psutil_cpu_s(self.pid)
        started = time.perf_counter()
        time.sleep(seconds)
        after = psutil_cpu_s(self.pid)
        return (after - before) / (time.perf_counter() - started) * 100

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 2**20

    def fds(self) -> int:
        return psutil.Process(self.pid).num_fds()

    def call(self, request: Any, timeout_s: float = 60.0) -> Any:
        assert self.conn is not None, "broker not started"
        return self.conn.call(request, timeout_s=timeout_s)

    def counts(self) -> dict[str, int]:
        return dict(self.call(p.Stats()).stats["counts"])

    def request_ms(self, make: Any, repeats: int = 5) -> tuple[float, float]:
        """Median milliseconds of ``repeats`` round trips of the request ``make()`` builds:
        (until the reply's bytes are in, until they are decoded into the protocol's Structs
        as the Python client does)."""
        assert self.conn is not None, "broker not started"
        raw, decoded = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            request_id = self.conn.send(make())
            got = self.conn.recv(60.0)
            arrived = time.perf_counter()
            if got is None or got[0] != request_id:
                raise RuntimeError(f"no reply to {make()!r} within 60 s (got {got!r:.200})")
            check(_replies.decode(got[1]))
            raw.append((arrived - started) * 1000)
            decoded.append((time.perf_counter() - started) * 1000)
        return median(raw), median(decoded)

    # -- stopping -----------------------------------------------------------------
    def _close_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _close_stdout(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        """Stop by pid (SIGTERM, wait, SIGKILL); the data stays for the caller to remove."""
        self._close_conn()
        if self.proc is not None:
            stop_popen(self.proc, timeout=30.0)
            self._close_stdout()
            self.proc = None

    def __enter__(self) -> ScaleBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
