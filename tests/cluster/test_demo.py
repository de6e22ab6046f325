"""``python examples/cluster/demo.py``: the pizzeria on three brokers, a leader of ``orders``
killed with kill -9 mid-way, ends with the exact count check (the Rail Streams step's table
included) and exit code 0."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from tests.cluster.zookeeper import available
from tests.helpers import ROOT, python_env


def test_the_cluster_demo_makes_every_item_once_through_a_leaders_kill_9() -> None:
    why = available()
    if why:
        pytest.skip(why)
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "cluster" / "demo.py"),
                           "--orders", "40", "--timeout", "80"], cwd=ROOT, env=python_env(),
                          capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with kill -9" in done.stdout
    assert "every ordered item made exactly once: OK" in done.stdout
    assert "made/ordered: pizza" in done.stdout
    assert "(Rail Streams), summed: " in done.stdout and ": equal to the tally" in done.stdout
    stopped = [line for line in done.stdout.splitlines() if line.startswith("cluster: stopped")]
    pids = [int(pid) for pid in stopped[-1].split()[3:]]
    assert len(pids) == 5, stopped  # rail up, three brokers, ZooKeeper
    assert not [pid for pid in pids if alive(pid)], "the demo left a process running"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
