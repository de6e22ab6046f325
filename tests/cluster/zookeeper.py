"""A real ZooKeeper (Debian's ``zookeeper`` package) on free loopback ports, for tests.

``start_zookeeper(folder, nodes=1)`` runs ``QuorumPeerMain`` from the package's jars, one
process per node, each with its own data folder and ports, and waits until it answers.
Every node is stopped by its pid (``stop``, ``kill9``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port

JARS = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"


def available() -> str | None:
    """None when ZooKeeper can run here, else why not."""
    if shutil.which("java") is None or not Path("/usr/share/java/zookeeper.jar").exists():
        return "needs Debian's zookeeper package (apt-get install zookeeper; .ci/run does)"
    return None


@dataclass
class ZooKeeper:
    folder: Path
    ports: list[int]
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    chroot: str = "/rail"

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports) + self.chroot

    def start_node(self, index: int) -> None:
        node = self.folder / f"zk{index}"
        out = open(node / "out.log", "ab")
        self.procs[index] = subprocess.Popen(
            ["java", "-Xmx256m", "-cp", JARS, "-Dzookeeper.admin.enableServer=false",
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(node / "zoo.cfg")],
            stdout=out, stderr=subprocess.STDOUT, cwd=node)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for index, port in enumerate(self.ports):
            if self.procs[index] is None:
                continue
            while not _ruok(port):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ZooKeeper on port {port} did not start: "
                                       f"{(self.folder / f'zk{index}' / 'out.log').read_text()[-2000:]}")
                time.sleep(0.1)

    def mode(self, index: int) -> str:
        """"leader", "follower" or "standalone" (what ``srvr`` says), or "" if it is down."""
        try:
            with socket.create_connection(("127.0.0.1", self.ports[index]), timeout=2) as s:
                s.sendall(b"srvr")
                text = s.recv(4096).decode(errors="replace")
        except OSError:
            return ""
        for line in text.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return ""

    def kill9(self, index: int) -> None:
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.procs[index] = None

    def stop(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            self.procs[index] = None


def _ruok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"srvr")
            return b"Mode:" in s.recv(4096)
    except OSError:
        return False


def start_zookeeper(folder: Path, nodes: int = 1) -> ZooKeeper:
    client = [free_port() for _ in range(nodes)]
    peers = [(free_port(), free_port()) for _ in range(nodes)]
    zk = ZooKeeper(folder, client, [None] * nodes)
    for i in range(nodes):
        node = folder / f"zk{i}"
        (node / "data").mkdir(parents=True, exist_ok=True)
        lines = ["tickTime=500", "initLimit=20", "syncLimit=10", f"dataDir={node / 'data'}",
                 f"clientPort={client[i]}", "clientPortAddress=127.0.0.1",
                 "admin.enableServer=false", "4lw.commands.whitelist=srvr,ruok,mntr",
                 "maxSessionTimeout=60000", "minSessionTimeout=1000"]
        if nodes > 1:
            (node / "data" / "myid").write_text(str(i + 1))
            lines += [f"server.{j + 1}=127.0.0.1:{peers[j][0]}:{peers[j][1]}"
                      for j in range(nodes)]
        (node / "zoo.cfg").write_text("\n".join(lines) + "\n")
    try:
        for i in range(nodes):
            zk.start_node(i)
        zk.wait_ready()
    except BaseException:
        zk.stop()
        raise
    return zk
