"""Helpers for tests that start real processes: brokers on free loopback ports, bounded waits.

Every process started here is stopped by pid (``stop``/``kill9``), never left behind.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = range(15000, min(_ephemeral_low(), 32768))


def free_port() -> int:
    """A loopback port nothing listens on, below the kernel's ephemeral range.

    A port the kernel picks for ``bind(0)`` comes from the same range as the source ports of
    outgoing connections, so between this call and the server's bind a ZeroMQ reconnect or a
    ZooKeeper client can take it (a ``rail up`` then exits with "Address already in use").
    Ports below the range are never handed out for that, and none is given twice in a run.
    """
    for _ in range(10_000):
        port = random.choice(_PORTS)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free loopback port left in {_PORTS}")


def written_lines(path: Path) -> list[str]:
    """The complete lines of a file another process is appending to.

    A reader can see a write half done: the last piece has no newline yet, so it is left
    for the next read instead of being parsed torn.
    """
    if not path.exists():
        return []
    return path.read_text().split("\n")[:-1]


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class BrokerProcess:
    proc: subprocess.Popen[str]
    data_dir: Path
    api: str
    ingest: str
    log_path: Path
    ready_line: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> int:
        return stop_process(self.proc, timeout)

    def kill9(self) -> None:
        kill9_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, wait; SIGKILL if it does not stop in time. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def kill9_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def start_broker(data_dir: Path, *extra: str, api_port: int | None = None,
                 ingest_port: int | None = None, timeout: float = 15.0,
                 env: dict[str, str] | None = None,
                 prefix: tuple[str, ...] = (), cwd: Path = ROOT) -> BrokerProcess:
    """Start ``python -m brokerd`` on free loopback ports and wait for its ready line.

    ``prefix`` runs it under another command, e.g. ``("prlimit", "--nofile=64:64")``;
    ``cwd``, the folder whose ``brokerd`` runs (another version's, say)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    api = f"tcp://127.0.0.1:{api_port}" if api_port else "tcp://127.0.0.1:*"
    ingest = f"tcp://127.0.0.1:{ingest_port}" if ingest_port else "tcp://127.0.0.1:*"
    log_path = data_dir.parent / f"{data_dir.name}-broker-{time.time_ns()}.log"
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "brokerd", "--data-dir", str(data_dir), "--bind", api,
         "--ingest", ingest, *extra],
        stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True,
        env={**python_env(), **(env or {})},
        cwd=cwd)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ready" in line or not line:
            break
    match = re.search(r"api=(\S+) ingest=(\S+)", line)
    if not match:
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"broker did not start: {line!r}\n{log_path.read_text()}")
    return BrokerProcess(proc, data_dir, match.group(1), match.group(2), log_path, line)
