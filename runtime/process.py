"""What the supervisor supervises: OS processes (``Child``), a worker's replica slots
(``Replica``) and one worker name with its policy (``Watcher``); brokerd is in
runtime.brokerchild.

Plain state and small behaviour; the supervisor's loop decides.  Used from that loop's
thread only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from runtime.config import WorkerSpec
from runtime.logfiles import PrefixedOutput
from runtime.policy import Backoff, CrashLedger, Health, Intensity, RestartPolicy

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when its parent dies (and dies now if it already
    did: the parent may have gone between fork and prctl)."""
    def preexec() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)
    return preexec


class Child:
    """One OS process the supervisor started; ``sample`` keeps psutil's CPU baseline."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path,
                 prefix: str = "") -> None:
        """Output goes straight to ``log_path``; with a ``prefix``, through a pipe the
        supervisor relays (``output``), each line prefixed."""
        self.output: PrefixedOutput | None = None
        if prefix:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                         process_group=0, preexec_fn=die_with(os.getpid()))  # noqa: PLW1509 - prctl only
            assert self.proc.stdout is not None
            self.output = PrefixedOutput(self.proc.stdout, log_path, prefix)
        else:
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=log, env=env, cwd=cwd, process_group=0,
                                             preexec_fn=die_with(os.getpid()))  # noqa: PLW1509
        self.pid = self.proc.pid
        self.started_at = time.monotonic()
        self.cpu_percent = 0.0
        self.rss = 0
        self._sample: psutil.Process | None = None
        self.sampled = False

    def sample(self) -> None:
        self.sampled = True
        try:
            if self._sample is None:
                self._sample = psutil.Process(self.pid)
            self.cpu_percent = self._sample.cpu_percent(None)
            self.rss = self._sample.memory_info().rss
        except psutil.Error:
            pass

    def signal(self, signum: int) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass


class Replica:
    """Slot ``index`` of a worker: its current process (if any) and its restart state."""

    def __init__(self, index: int, member_id: str, backoff: Backoff) -> None:
        self.index = index
        self.member_id = member_id
        self.backoff = backoff
        self.child: Child | None = None
        self.health: Health | None = None
        self.restart_at: float | None = None
        self.kill_at: float | None = None  # SIGKILL if still alive then (after a SIGTERM)
        self.then = ""  # after the next exit: "" = per policy, "restart", "retire"
        self.restarts = 0  # crash restarts of this slot (the watcher counts them all)
        self.reported: tuple[str, int, int] | None = None  # the last event logged as slow

    def state(self) -> str:
        if self.child is None:
            return "restarting" if self.restart_at is not None else "exited"
        if self.then:
            return "stopping" if self.then == "retire" else "restarting"
        return self.health.state if self.health is not None else "running"


class Watcher:
    """One worker name: ``spec.replicas`` processes of one script in one group."""

    def __init__(self, name: str, spec: WorkerSpec, registered: bool) -> None:
        self.name = name
        self.spec = spec
        self.registered = registered
        self.policy = RestartPolicy(spec.policy)
        self.intensity = Intensity(spec.max_restarts, spec.within_s)
        self.replicas: dict[int, Replica] = {}
        self.restarts = 0
        self.recycles = 0  # graceful restarts past max_rss_mb (not counted as crashes)
        self.processed_before = 0
        self.processed_seen: int | None = None  # the last exact count (rail status)
        self.failed_before = 0
        self.failed = ""  # why it was given up on; "" while supervised
        self.removing = False
        self.crashes = CrashLedger(spec.quarantine_after)  # poison events (docs/workers.md)
        self.quarantine_loaded = False  # the list on disk was read into ``crashes``

    def respec(self, spec: WorkerSpec) -> None:
        """New settings (rail reload): policy, intensity and backoff start afresh."""
        self.spec = spec
        self.policy = RestartPolicy(spec.policy)
        self.intensity = Intensity(spec.max_restarts, spec.within_s)
        self.crashes.after = spec.quarantine_after
        self.failed = ""
        for replica in self.replicas.values():
            replica.backoff = self.backoff()

    def backoff(self) -> Backoff:
        return Backoff(self.spec.backoff_s, self.spec.backoff_max_s,
                       stable_s=max(10.0, self.spec.backoff_max_s))

    def new_replica(self, index: int, tag: str = "") -> Replica:
        """Replica ``index``, member ``<name>-<index><tag>`` of its group (``tag``: what
        tells this supervisor's replicas from another's in the same group)."""
        replica = Replica(index, f"{self.name}-{index}{tag}", self.backoff())
        self.replicas[index] = replica
        return replica

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.child is not None]

    def state(self) -> str:
        if self.failed:
            return "failed"
        alive = len(self.alive())
        if self.removing or any(r.then == "retire" for r in self.replicas.values()):
            return "stopping"
        if alive >= self.spec.replicas:
            return "running" if alive else "stopped"
        if any(r.restart_at is not None for r in self.replicas.values()):
            return "restarting"
        return "degraded" if alive else "exited"


# The supervisor's own secrets, which no child (broker, worker) needs: the console's token.
WITHHELD = ("RAIL_CONSOLE_TOKEN",)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in WITHHELD}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
