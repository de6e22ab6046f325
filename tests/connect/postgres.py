"""A real PostgreSQL server for the connect tests and bench: initdb into a temp dir, the
postmaster run in the foreground on a free loopback port as a child of this process, stopped
by its pid at the end.

As root the server runs as the ``postgres`` user (it refuses to run as root), in a temp dir
that user owns.  The postmaster gets SIGKILL if this process dies without stopping it (a
test run killed by a timeout), so no server outlives the tests; ``pg_ctl`` would detach it.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.helpers import free_port

BIN = Path(os.environ.get("RAIL_PG_BIN", "/usr/lib/postgresql/15/bin"))
AVAILABLE = (BIN / "postgres").exists() and (BIN / "initdb").exists()
PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 30.0


_libc = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded here: never dlopen after a fork


def as_postgres(parent: int) -> Callable[[], None]:
    """A preexec_fn: become the postgres user when root, then die with ``parent`` (set
    after the user change, which clears the parent-death signal).  The user is looked up
    before the fork: the child of a threaded process calls nothing that takes a lock."""
    ids = None
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        ids = (user.pw_uid, user.pw_gid)

    def preexec() -> None:
        if ids is not None:
            os.setgid(ids[1])
            os.setuid(ids[0])
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


class PostgresServer:
    def __init__(self, fsync: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rail-pg-"))
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        env = {**os.environ, "HOME": str(self.dir)}
        subprocess.run([BIN / "initdb", "-D", self.data, "--auth=trust", "-U", "postgres",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=60,
                       preexec_fn=as_postgres(os.getpid()),
                       env=env, cwd=self.dir)
        with open(self.dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [BIN / "postgres", "-D", self.data, "-p", str(self.port), "-k", self.dir,
                 "-c", "listen_addresses=127.0.0.1", "-c", f"fsync={'on' if fsync else 'off'}"],
                stdout=log, stderr=log, env=env, cwd=self.dir,
                preexec_fn=as_postgres(os.getpid()))  # noqa: PLW1509 - no locks taken
        self.pid = self.proc.pid
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "server.log").read_text(errors="replace")
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start:\n{log}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT), then SIGKILL if it lingers; remove its files."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
