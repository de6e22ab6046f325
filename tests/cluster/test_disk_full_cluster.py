"""A full disk in a cluster, on a real 8 MiB tmpfs under one broker of three (mounting one
needs root: the test skips, saying why, without it).

A follower whose disk is full leaves the in-sync replicas and waits (it does not fetch the
same records again and again), the leader and the other follower go on acknowledging
``acks="all"`` produce, and once space returns the follower catches up and rejoins: every
replica ends identical and nothing acknowledged is lost or duplicated.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cluster.client import (
    LeaderProducer,
    check_replicas,
    create_in_sync,
    start_member,
    wait_in_sync,
)
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import BrokerProcess
from tests.integration.test_disk_full import fill

SMALL = 2  # the broker on the small disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / f"b{SMALL}"  # that broker's data dir (its log stays outside)
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("needs root to mount an 8 MiB tmpfs for the disk-full test")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def start(tmp_path: Path, zookeeper: ZooKeeper) -> list[BrokerProcess]:
    config = tmp_path / "broker.toml"
    config.write_text("replica_lag_time_ms = 1500\n")
    brokers: list[BrokerProcess] = []
    try:
        for i in range(3):
            brokers.append(start_member(tmp_path, zookeeper, i, "--config", str(config)))
    except BaseException:
        for b in brokers:
            b.stop()
        raise
    return brokers


def test_a_follower_with_a_full_disk_leaves_the_isr_waits_and_catches_up(
        tmp_path: Path, small_disk: Path, zookeeper: ZooKeeper) -> None:
    brokers = start(tmp_path, zookeeper)
    producer: LeaderProducer | None = None
    try:
        apis = [b.api for b in brokers]
        leaders = create_in_sync(apis, "t", 1, 3)
        assert leaders[0] != SMALL, leaders  # the assignment puts broker 0 first
        producer = LeaderProducer(apis, "t", producer_id=1)
        for i in range(20):
            producer.send(0, [f"before-{i}"])
        filler = small_disk / "filler"
        fill(filler)
        big = "x" * 2000
        for i in range(200):  # ~400 KB the full follower cannot store
            producer.send(0, [f"full-{i}-{big}"])
        wait_in_sync(apis, "t", 1, 2)  # it left the ISR; acks="all" went on without it
        follower = psutil.Process(brokers[SMALL].pid)
        before = follower.cpu_times()
        time.sleep(3.0)
        after = follower.cpu_times()
        busy = (after.user + after.system - before.user - before.system) / 3.0
        assert busy < 0.25, f"the full follower spins: {busy:.0%} of a core"
        log = brokers[SMALL].log_path.read_text(errors="replace")
        assert 0 < log.count("No space left") <= 20, log.count("No space left")
        os.unlink(filler)
        wait_in_sync(apis, "t", 1, 3)  # caught up and back in the ISR
        for i in range(20):
            producer.send(0, [f"after-{i}"])
        wait_in_sync(apis, "t", 1, 3)
        acked = list(producer.acked)
    finally:
        if producer is not None:
            producer.close()
        for b in brokers:
            b.stop()
    assert len(acked) == 240
    check_replicas(brokers, "t", 1, acked)
