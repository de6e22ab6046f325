"""``rail cluster status`` against real brokers: healthy, then a broker killed with kill -9
shows as under-replicated partitions (exit 1); a single broker is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cluster.client import wait_in_sync
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import ROOT, python_env, start_broker, wait_for


def rail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT,
                          env=python_env(), capture_output=True, text=True, timeout=30,
                          check=False)


def test_cluster_status_shows_brokers_leaders_and_what_is_under_replicated(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        assert rail("topics", "create", "t", "--partitions", "3", "--broker", apis[0]).returncode == 0
        wait_in_sync(apis, "t", 3, 3)
        healthy = rail("cluster", "status", "--all", "--broker", apis[1])
        assert healthy.returncode == 0, healthy.stderr
        assert "3 brokers, controller" in healthy.stdout
        assert "3 partitions: 0 offline, 0 under-replicated" in healthy.stdout
        assert healthy.stdout.count(" ok") == 3

        brokers[2].kill9()

        def degraded() -> dict | None:
            run = rail("cluster", "status", "--json", "--broker", apis[0])
            status = json.loads(run.stdout) if run.stdout else None
            return status if run.returncode == 1 and status and status["under_replicated"] else None
        status = wait_for(degraded, 60, interval=0.5, what="under-replicated partitions")
        assert sorted(b["id"] for b in status["brokers"]) == [0, 1]
        assert all(2 not in x["isr"] for x in status["partitions"] if x["state"] != "ok")
        assert status["offline"] == 0
    finally:
        for b in brokers:
            b.stop()


def test_cluster_status_of_a_single_broker_says_it_is_not_a_cluster(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "data")
    try:
        run = rail("cluster", "status", "--broker", broker.api)
        assert run.returncode == 1
        assert "single broker, not a member of a cluster" in run.stderr
    finally:
        broker.stop()
