from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BrokerProcess, start_broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A real brokerd on free loopback ports with a temp data dir, stopped after the test."""
    proc = start_broker(tmp_path / "data")
    try:
        yield proc
    finally:
        proc.stop()
