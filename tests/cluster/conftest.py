from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.zookeeper import ZooKeeper, available, start_zookeeper


@pytest.fixture
def zookeeper(tmp_path: Path) -> Iterator[ZooKeeper]:
    """A one-node ZooKeeper on free loopback ports, stopped after the test."""
    why = available()
    if why:
        pytest.skip(why)
    zk = start_zookeeper(tmp_path / "zk")
    try:
        yield zk
    finally:
        zk.stop()
