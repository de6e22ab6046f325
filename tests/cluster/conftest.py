from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.zookeeper import ZooKeeper, available, start_zookeeper
from tests.helpers import BrokerProcess, start_broker


def _running_zookeeper(folder: Path) -> Iterator[ZooKeeper]:
    """A one-node ZooKeeper on free loopback ports (the test skipped, saying why, where
    there is none), stopped when the fixture ends."""
    why = available()
    if why:
        pytest.skip(why)
    zk = start_zookeeper(folder)
    try:
        yield zk
    finally:
        zk.stop()


@pytest.fixture
def zookeeper(tmp_path: Path) -> Iterator[ZooKeeper]:
    """A ZooKeeper for one test."""
    yield from _running_zookeeper(tmp_path / "zk")


_chroots = itertools.count(1)


@pytest.fixture(scope="module")
def shared_zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeper]:
    """One ZooKeeper for a module; each test's cluster lives under a chroot of its own."""
    yield from _running_zookeeper(tmp_path_factory.mktemp("zk"))


@pytest.fixture
def one_broker_cluster(shared_zookeeper: ZooKeeper, tmp_path: Path) -> Iterator[BrokerProcess]:
    """A fresh one-broker cluster (a chroot and a data dir of its own), stopped after the
    test: for a single broker's tests run again against the cluster's code paths."""
    proc = start_broker(tmp_path / "b1", "--broker-id", "1", "--zookeeper",
                        f"{shared_zookeeper.hosts}/c{next(_chroots)}", timeout=30.0)
    try:
        yield proc
    finally:
        proc.stop()
