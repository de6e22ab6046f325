from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.connect.postgres import AVAILABLE, PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session's connect tests (each test uses its own tables)."""
    if not AVAILABLE:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) not found: install "
                    "Debian's postgresql or set RAIL_PG_BIN")
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()
