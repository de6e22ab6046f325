"""The Node example over CURVE: keys from the same variables as the Python client."""

from __future__ import annotations

import os
from pathlib import Path

from brokerd import protocol as p
from runtime.connection import Connection
from tests.interop import describe_run, run
from tests.interop.conftest import node_example  # noqa: F401 - the fixture (npm ci)
from tests.security.secure import (
    client_env,
    client_keys,
    make_keys,
    rule,
    start_secure_broker,
    write_acl,
)


def test_the_node_producer_authenticates_and_a_stranger_key_gets_nothing_in(
        tmp_path: Path, node_example: Path) -> None:  # noqa: F811 - the fixture
    keys = {n: make_keys(tmp_path / "keys", n) for n in ("broker", "node", "stranger")}
    acl = write_acl(tmp_path / "acl.toml", [keys["node"]],
                    rule("node", "topic", "node.", ["write", "read"], match="prefix"))
    broker = start_secure_broker(tmp_path, keys["broker"], acl)
    producer = ["node", str(node_example / "producer.js"), "--broker", broker.api,
                "--topic", "node.events", "--count", "50", "--timeout", "3000"]
    try:
        done = run(producer, env={**os.environ, **client_env(keys["broker"], keys["node"])})
        assert done.returncode == 0, describe_run(done)
        assert "every one acknowledged" in done.stdout

        refused = run(producer, env={**os.environ,
                                     **client_env(keys["broker"], keys["stranger"])})
        assert refused.returncode == 1, describe_run(refused)
        plaintext = run(producer, env=dict(os.environ))
        assert plaintext.returncode == 1, describe_run(plaintext)

        conn = Connection(broker.api, timeout_s=5,
                          keys=client_keys(keys["broker"], keys["node"]))
        try:
            end = conn.call(p.ListOffsets(topic="node.events", partition=0,
                                          timestamp=p.LATEST)).offset
        finally:
            conn.close()
        assert end == 50  # only the authenticated run's events
    finally:
        broker.stop()
