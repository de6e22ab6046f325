"""Network partitions on loopback: each broker runs under a user id of its own (setpriv) so
that an iptables rule on that user id cuts exactly one broker off from ZooKeeper while its
clients and the other brokers still reach it.  The history check runs at the end, as in
every cluster scenario."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.cluster.client import LeaderProducer, check_replicas, metadata, wait_in_sync
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import ROOT, BrokerProcess, python_env, start_broker, wait_for
from tests.integration.wire import RawClient

UID_BASE = 51_000
ONE = msgspec.Raw(msgspec.msgpack.encode([["probe"]]))


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (iptables rules and setpriv)"
    for tool in ("iptables", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iptables util-linux; .ci/run does)"
    probe = subprocess.run(["iptables", "-L", "OUTPUT", "-n"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"iptables does not work here: {probe.stderr.decode(errors='replace')[:200]}"
    other = subprocess.run(["setpriv", f"--reuid={UID_BASE}", f"--regid={UID_BASE}",
                            "--clear-groups", sys.executable, "-c", "import brokerd.server"],
                           cwd=ROOT, env=python_env(), capture_output=True, check=False)
    if other.returncode != 0:
        return ("another user id cannot run the broker from this checkout (its folders are "
                f"not readable by others): {other.stderr.decode(errors='replace')[-200:]}")
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


class Cut:
    """iptables rules that drop one user id's packets to a port on loopback."""

    def __init__(self) -> None:
        self.rules: list[list[str]] = []

    def add(self, uid: int, port: int) -> None:
        rule = ["OUTPUT", "-o", "lo", "-p", "tcp", "-m", "owner", "--uid-owner", str(uid),
                "--dport", str(port), "-j", "DROP"]
        subprocess.run(["iptables", "-A", *rule], check=True)
        self.rules.append(rule)

    def heal(self) -> None:
        while self.rules:
            subprocess.run(["iptables", "-D", *self.rules.pop()], check=False)


@pytest.fixture
def cut() -> Iterator[Cut]:
    rules = Cut()
    try:
        yield rules
    finally:
        rules.heal()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder the brokers' user ids can write in (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="rail-partition-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_as(folder: Path, zk: ZooKeeper, broker_id: int) -> BrokerProcess:
    data = folder / f"b{broker_id}"
    data.mkdir(exist_ok=True)
    os.chown(data, UID_BASE + broker_id, UID_BASE + broker_id)
    return start_broker(data, "--broker-id", str(broker_id), "--zookeeper", zk.hosts,
                        timeout=30.0, prefix=("setpriv", f"--reuid={UID_BASE + broker_id}",
                                              f"--regid={UID_BASE + broker_id}",
                                              "--clear-groups"))


def test_a_leader_cut_off_from_zookeeper_stops_leading_and_loses_nothing(
        shared_dir: Path, zookeeper: ZooKeeper, cut: Cut) -> None:
    brokers = [start_as(shared_dir, zookeeper, i) for i in range(3)]
    producer: LeaderProducer | None = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=1, config={"min_insync_replicas": 2})
        leader = wait_in_sync(apis, "t", 1, 3)[0]
        producer = LeaderProducer(apis, "t", producer_id=21)
        for i in range(30):
            producer.send(0, [f"before-{i}"])

        cut.add(UID_BASE + leader, zookeeper.ports[0])  # the leader <-> ZooKeeper only
        others = [b.api for i, b in enumerate(brokers) if i != leader]

        def new_leader() -> bool:
            metas = [m for m in (metadata(api, "t") for api in others) if m]
            return any(m["topics"][0]["partitions"][0]["leader"] not in (-1, leader)
                       for m in metas)
        wait_for(new_leader, timeout=45, interval=0.2, what="a leader elected without it")
        # Still reachable by clients, the old leader must take no write at all.
        with RawClient(apis[leader]) as stale:
            for acks in (1, "all"):
                reply = stale.call("produce", topic="t", partition=0, acks=acks, records=ONE)
                assert reply["op"] == "error" and reply["code"] in (
                    "NOT_LEADER", "NOT_ENOUGH_REPLICAS"), reply
        for i in range(30):
            producer.send(0, [f"during-{i}"])

        cut.heal()
        wait_in_sync(apis, "t", 1, 3, timeout=60)  # it came back as a follower and caught up
        for i in range(10):
            producer.send(0, [f"after-{i}"])
        wait_in_sync(apis, "t", 1, 3, timeout=60)
    finally:
        if producer is not None:
            producer.close()
        for b in brokers:
            b.stop()
    logs = check_replicas(brokers, "t", 1, producer.acked if producer else [])
    values = [msgspec.msgpack.decode(r)[0] for _, r in logs["0"][0]]
    assert "probe" not in values, "the cut-off leader stored a write"
    assert len(values) == 70
