"""``rail dlq`` and the replayer's lease, ledger and crash recovery (every test of
``tests/integration/test_dlq.py``) against a broker of a cluster given as one endpoint, as
a user passes ``--broker``: the group requests of a replay (its lease and cursor) must go
to the group's coordinator. Before ``runtime.routing.connect`` learned to tell a cluster's
broker from a single one, each of these failed with ``NOT_COORDINATOR``."""

from __future__ import annotations

import pytest

from tests.helpers import BrokerProcess
from tests.integration.test_dlq import *  # noqa: F403 (the tests, collected again)


@pytest.fixture
def broker(one_broker_cluster: BrokerProcess) -> BrokerProcess:
    return one_broker_cluster
