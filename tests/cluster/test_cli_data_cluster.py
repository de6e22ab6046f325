"""The data commands of ``rail`` (topics, send, groups, reset-offsets: every test of
``tests/integration/test_cli_data.py``) against a broker of a cluster given as one endpoint,
as a user passes ``--broker``: group commands must reach the group's coordinator and topic
commands the partitions' leaders, with the same output as on a single broker."""

from __future__ import annotations

import pytest

from tests.helpers import BrokerProcess
from tests.integration.test_cli_data import *  # noqa: F403 (the tests, collected again)


@pytest.fixture
def broker(one_broker_cluster: BrokerProcess) -> BrokerProcess:
    return one_broker_cluster
