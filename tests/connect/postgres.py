"""A real PostgreSQL server for the connect tests and bench: initdb into a temp dir,
pg_ctl start on a free loopback port, stopped by pg_ctl (and its pid) at the end.

As root the server runs as the ``postgres`` user (it refuses to run as root), in a temp
dir that user owns."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import free_port

BIN = Path(os.environ.get("RAIL_PG_BIN", "/usr/lib/postgresql/15/bin"))
AVAILABLE = (BIN / "pg_ctl").exists() and (BIN / "initdb").exists()


class PostgresServer:
    def __init__(self, fsync: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rail-pg-"))
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"
        self._run(BIN / "initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   f"-c fsync={'on' if fsync else 'off'}")
        self._run(BIN / "pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.dir / "server.log"), "-w", "-t", "30", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _run(self, *argv: object) -> None:
        subprocess.run([*self.as_user, *map(str, argv)], check=True, capture_output=True,
                       timeout=60)

    def stop(self) -> None:
        try:
            self._run(BIN / "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (subprocess.SubprocessError, OSError):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
