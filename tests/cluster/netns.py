"""A private network for cluster tests: one Linux network namespace per host, each joined
by a veth pair to a bridge in the root namespace, on a random /24 in 10.0.0.0/8.

The test process stays in the root namespace and reaches every host through the bridge
(at ``.1``); ZooKeeper runs in a namespace of its own (``.2``) and each broker in its own
(``.10`` and up), so every endpoint a broker registers is a real, routable address.
``cut(host)`` takes the host's veth down at the bridge: a real partition (no RST, packets
just stop, both ways), while processes inside the namespace still reach each other;
``cut_between(a, b)`` drops only what two hosts send each other (iptables in each).
``Network.close`` removes every namespace, veth and the bridge, after killing by pid
whatever still runs in a namespace (``ip netns pids``).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.zookeeper import JARS
from tests.helpers import BrokerProcess, start_broker

API_PORT, INGEST_PORT, ZK_PORT = 7400, 7401, 2181


def why_not() -> str | None:
    """None when namespaces, veths and bridges can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces (ip netns)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip (apt-get install iproute2)"
    probe = f"railprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], check=False, capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns is unavailable here: {made.stderr.strip()[:200]}"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    command = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


@dataclass
class Host:
    """One namespace on the bridge: its name, its veth's root-side end, its address."""

    ns: str
    veth: str
    addr: str

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.addr}:{port}"


@dataclass
class Network:
    tag: str
    prefix: str  # "10.a.b"
    bridge: str
    hosts: list[Host] = field(default_factory=list)

    @classmethod
    def create(cls) -> Network:
        """A bridge on a /24 that no interface of this machine uses yet."""
        used = subprocess.run(["ip", "-4", "-o", "addr"], check=False, capture_output=True,
                              text=True).stdout
        while True:
            prefix = f"10.{random.randrange(256)}.{random.randrange(256)}"
            if f" {prefix}." not in used:
                break
        tag = secrets.token_hex(2)
        net = cls(tag, prefix, f"rlbr{tag}")
        try:
            _ip("link", "add", net.bridge, "type", "bridge")
            _ip("addr", "add", f"{prefix}.1/24", "dev", net.bridge)
            _ip("link", "set", net.bridge, "up")
        except BaseException:
            net.close()
            raise
        return net

    def add(self, name: str, last_byte: int) -> Host:
        """A namespace ``rail-<tag>-<name>`` at ``<prefix>.<last_byte>``, default route via
        the bridge."""
        host = Host(f"rail-{self.tag}-{name}", f"rl{self.tag}{name}", f"{self.prefix}.{last_byte}")
        _ip("netns", "add", host.ns)
        self.hosts.append(host)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", host.veth + "p")
        _ip("link", "set", host.veth + "p", "netns", host.ns)
        _ip("link", "set", host.veth, "master", self.bridge, "up")
        _ip("link", "set", host.veth + "p", "name", "eth0", ns=host.ns)
        _ip("addr", "add", f"{host.addr}/24", "dev", "eth0", ns=host.ns)
        _ip("link", "set", "eth0", "up", ns=host.ns)
        _ip("link", "set", "lo", "up", ns=host.ns)
        _ip("route", "add", "default", "via", f"{self.prefix}.1", ns=host.ns)
        return host

    def cut(self, host: Host) -> None:
        """Partition the host from everyone else (the bridge drops its link both ways)."""
        _ip("link", "set", host.veth, "down")

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    def cut_between(self, a: Host, b: Host) -> None:
        """Partition two hosts from each other only: each namespace drops what it sends to
        the other (iptables in the namespace, gone with it).  Both still reach the rest."""
        for src, dst in ((a, b), (b, a)):
            _iptables(src, "-A", dst.addr)

    def heal_between(self, a: Host, b: Host) -> None:
        for src, dst in ((a, b), (b, a)):
            _iptables(src, "-D", dst.addr)


    def close(self) -> None:
        """Kill by pid anything left in the namespaces, then remove them and the bridge
        (a namespace's veth end goes with it, and its peer with that)."""
        for host in self.hosts:
            pids = subprocess.run(["ip", "netns", "pids", host.ns], check=False,
                                  capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for command in (["netns", "del", host.ns], ["link", "del", host.veth]):
                subprocess.run(["ip", *command], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        self.hosts.clear()


def _iptables(host: Host, action: str, destination: str) -> None:
    command = ["ip", "netns", "exec", host.ns, "iptables", action, "OUTPUT", "-d",
               f"{destination}/32", "-j", "DROP"]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


@dataclass
class NetZooKeeper:
    """A one-node ZooKeeper in its own namespace; ``hosts`` is what brokers are given."""

    host: Host
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def hosts(self) -> str:
        return f"{self.host.addr}:{ZK_PORT}/rail"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_zookeeper(host: Host, folder: Path, timeout: float = 30.0) -> NetZooKeeper:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "zoo.cfg").write_text("\n".join([
        "tickTime=500", f"dataDir={folder / 'data'}", f"clientPort={ZK_PORT}",
        f"clientPortAddress={host.addr}", "admin.enableServer=false",
        "4lw.commands.whitelist=srvr", "minSessionTimeout=1000",
        "maxSessionTimeout=60000"]) + "\n")
    log = folder / "out.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, "java", "-Xmx256m", "-cp", JARS,
             "-Dzookeeper.admin.enableServer=false",
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(folder / "zoo.cfg")],
            stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    zk = NetZooKeeper(host, proc, log)
    deadline = time.monotonic() + timeout
    while not _answers(host.addr):
        if proc.poll() is not None or time.monotonic() > deadline:
            zk.stop()
            raise RuntimeError(f"ZooKeeper in {host.ns} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return zk


def _answers(addr: str) -> bool:
    try:
        with socket.create_connection((addr, ZK_PORT), timeout=1) as s:
            s.sendall(b"srvr")
            return b"Mode:" in s.recv(4096)
    except OSError:
        return False


def start_broker_in(host: Host, folder: Path, zk: NetZooKeeper, broker_id: int,
                    config: Path) -> BrokerProcess:
    """``ip netns exec NS python -m brokerd`` bound and advertised at the host's address
    (``ip netns exec`` execs: the pid is the broker's own)."""
    api = host.endpoint(API_PORT)
    return start_broker(folder / f"b{broker_id}", "--bind", api, "--ingest",
                        host.endpoint(INGEST_PORT), "--advertise", api, "--broker-id",
                        str(broker_id), "--zookeeper", zk.hosts, "--config", str(config),
                        timeout=30.0, prefix=("ip", "netns", "exec", host.ns))
