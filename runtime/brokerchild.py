"""brokerd as a child of ``rail up``: start it, wait for its ready line, say why it stopped,
restart it per its policy, stop it.  Used from the supervisor's loop only.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from brokerd.protocol import EXIT_BIND, EXIT_CONFIG, EXIT_UNAVAILABLE
from runtime.config import RailConfig
from runtime.policy import Backoff, Intensity
from runtime.process import Child, child_env

LOG = logging.getLogger("rail.supervisor")
READY_S = 20.0  # how long a starting brokerd gets to print its ready line


class BrokerChild:
    """brokerd as a supervised child (or, with ``endpoint``, a running broker we only talk
    to)."""

    def __init__(self, config: RailConfig, endpoint: str, logs: Path, cwd: Path) -> None:
        self.config = config
        self.endpoint = endpoint
        self.external = bool(endpoint)
        self.log = logs / "brokerd.log"
        self.cwd = cwd
        self.child: Child | None = None
        self.backoff = Backoff(0.2, 5.0, stable_s=10.0)
        self.intensity = Intensity(5, 60.0)
        self.restart_at: float | None = None
        self.kill_at: float | None = None  # SIGKILL then, if a stop asked for is not done
        self.restart_asked = False  # rail restart brokerd: its exit is not a crash
        self.restarts = 0
        self.failed = ""
        self.log_offset = 0  # where brokerd.log stood when this child started

    def argv(self) -> list[str]:
        b = self.config.broker
        security = [*(["--curve-secret-key", b.curve_secret_key] if b.curve_secret_key else []),
                    *(["--acl", b.acl] if b.acl else [])]
        cluster = [*(["--zookeeper", b.zookeeper] if b.zookeeper else []),
                   *(["--broker-id", str(b.broker_id)] if b.broker_id is not None else []),
                   *(["--advertise", b.advertise] if b.advertise else [])]
        return [sys.executable, "-m", "brokerd", "--data-dir", b.data_dir, "--bind", b.bind,
                "--ingest", b.ingest, *security, *cluster]

    @property
    def member_tag(self) -> str:
        """Appended to this supervisor's member ids: supervisors on other hosts (or other
        brokers of a cluster) run replicas of the same workers in the same groups, and a
        member id names one member.  ``[supervisor].node`` (``rail up --node``) if set;
        else ``cook-0`` of broker 1 is ``cook-0.b1``, and workers run against a broker
        elsewhere (``--broker``) are ``cook-0.<host name>``."""
        if self.config.supervisor.node:
            return f".{self.config.supervisor.node}"
        if self.clustered:
            return f".b{self.config.broker.broker_id}"
        return f".{socket.gethostname().split('.')[0]}" if self.external else ""

    @property
    def clustered(self) -> bool:
        """Its broker joins a cluster (``[broker].zookeeper``): requests go where they are
        served (``runtime.routing.Router``), not all to this broker."""
        return bool(self.config.broker.zookeeper) and not self.external

    @property
    def grace_s(self) -> float:
        """How long brokerd gets to stop (flushing every log) before SIGKILL."""
        return max(self.config.supervisor.grace_s, 5.0)

    def spawn(self) -> None:
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        child = Child(self.argv(), child_env({}), self.log, self.cwd)
        self.child = child
        self.restart_at = None
        self.backoff.started(child.started_at)
        LOG.info("started brokerd pid %d", child.pid)

    def wait_ready(self) -> tuple[str | None, int | None]:
        """The broker's api endpoint from its ready line, within READY_S; else None and its
        exit code (its cause line printed)."""
        child = self.child
        assert child is not None
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                f.seek(self.log_offset)
                for line in f.read().decode(errors="replace").splitlines():
                    if line.startswith("brokerd ready api="):
                        return line.split("api=", 1)[1].split()[0], None
            if child.proc.poll() is not None:
                break
            time.sleep(0.05)
        code = child.proc.poll()
        if code is None:
            child.signal(signal.SIGKILL)
            child.proc.wait(5)
        self.child = None
        print(f"rail: {self.why_not_ready(code)}brokerd did not become ready (exit code "
              f"{code}): {self.cause()} (log: {self.log})", file=sys.stderr)
        return None, code

    def why_not_ready(self, code: int | None) -> str:
        """A broker joining a cluster: what its exit code means, in a sentence of its own."""
        b = self.config.broker
        if not b.zookeeper:
            return ""
        if code == EXIT_UNAVAILABLE:
            return (f"ZooKeeper at {b.zookeeper} cannot be reached: start it, or fix "
                    "[broker].zookeeper / --zookeeper. ")
        if code == EXIT_CONFIG and "already registered" in self.cause():
            return (f"broker id {b.broker_id} is taken by another live broker of the cluster: "
                    "give this one its own [broker].broker_id / --broker-id. ")
        return ""

    def cause(self) -> str:
        """The line of brokerd's log (since its last start) that says why it stopped."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_offset)
                tail = f.read()[-65536:].decode(errors="replace")
        except OSError as exc:
            return f"cannot read its log: {exc}"
        return cause_line(tail.splitlines()) or "it wrote nothing"

    def on_exit(self, code: int, now: float) -> None:
        """It exited: restart it now (rail restart), after a backoff, or mark it failed."""
        self.child = None
        self.kill_at = None
        if self.restart_asked:
            LOG.info("brokerd exited with code %s for rail restart", code)
            self.restart_asked = False
            self.restarts += 1
            self.restart_at = now
            return
        LOG.error("brokerd exited with code %s", code)
        if code in (EXIT_CONFIG, EXIT_BIND) or self.intensity.record(now):
            self.failed = f"exit code {code}: {self.cause()}"
            LOG.error("brokerd failed (%s); the workers keep retrying it", self.failed)
            return
        self.restarts += 1
        self.restart_at = now + self.backoff.next_delay(now)

    def restart(self) -> None:
        """Stop brokerd (SIGTERM, SIGKILL after grace_s) and start it again; a failed one is
        started at once.  Workers reconnect by themselves."""
        if self.external:
            raise ValueError(f"the broker at {self.endpoint} was not started by rail up: "
                             "restart it where it runs")
        self.failed = ""
        self.intensity.reset()
        self.backoff.reset()
        now = time.monotonic()
        if self.child is None:
            self.restart_at = now
            return
        self.restart_asked = True
        self.child.signal(signal.SIGTERM)
        self.kill_at = now + self.grace_s

    def stop(self) -> None:
        """SIGTERM, wait up to grace_s, then SIGKILL."""
        child = self.child
        if child is None:
            return
        child.signal(signal.SIGTERM)
        try:
            child.proc.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            LOG.warning("brokerd did not stop in time: SIGKILL")
            child.signal(signal.SIGKILL)
            child.proc.wait(5)
        self.child = None
        LOG.info("brokerd stopped (exit code %s)", child.proc.returncode)


def cause_line(lines: list[str]) -> str:
    """From a dead process's output, the line that names the cause: its own one-line error
    (``brokerd: ...``), else a traceback's last line, else the last line."""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if line.startswith("brokerd:"):
            return line
    return lines[-1] if lines else ""
