from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers import BrokerProcess, start_broker

if TYPE_CHECKING:
    from tests.connect.postgres import PostgresServer


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A real brokerd on free loopback ports with a temp data dir, stopped after the test."""
    proc = start_broker(tmp_path / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session's tests that need one (each uses its own
    tables): the connect tests, the connect tests on a cluster."""
    # psycopg is imported only by the tests that use it
    from tests.connect.postgres import AVAILABLE, PostgresServer
    if not AVAILABLE:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) not found: install "
                    "Debian's postgresql or set RAIL_PG_BIN")
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()
