"""examples/shell/send.sh: one event from the shell, with python3 -c and pyzmq (+ msgpack for
the acknowledged produce), no Rail client."""

from __future__ import annotations

import os
import sys

from tests.helpers import BrokerProcess, wait_for
from tests.interop import EXAMPLES, describe_run, need_tools, read_topic, run, topic_exists


def test_send_sh_ingests_and_produces(broker: BrokerProcess) -> None:
    need_tools("sh")
    send = ["sh", str(EXAMPLES / "shell" / "send.sh")]
    env = {**os.environ, "PYTHON": sys.executable}  # an interpreter with pyzmq and msgpack

    pushed = run([*send, "-e", broker.ingest, "sh.events", "hello from the shell"], env=env)
    assert pushed.returncode == 0, describe_run(pushed)
    wait_for(lambda: topic_exists(broker.api, "sh.events")
             and len(read_topic(broker.api, "sh.events")) == 1, what="the ingested event")

    keyed = run([*send, "-e", broker.ingest, "-k", "k1", "sh.events", "keyed"], env=env)
    assert keyed.returncode == 0, describe_run(keyed)
    wait_for(lambda: len(read_topic(broker.api, "sh.events")) == 2, what="the keyed event")

    acked = run([*send, "-r", "-e", broker.api, "-k", "k2", "sh.events", "acknowledged"],
                env=env)
    assert acked.returncode == 0, describe_run(acked)
    assert "'op': 'produce'" in acked.stdout and "'offsets': [[0, 2, 1]]" in acked.stdout

    assert [r for _p, _o, r in read_topic(broker.api, "sh.events")] == [
        [b"hello from the shell"], [b"keyed", b"k1"], ["acknowledged", "k2"]]

    refused = run([*send, "-r", "-e", broker.api, "bad topic", "x"], env=env)
    assert refused.returncode == 1 and "INVALID_TOPIC" in refused.stdout, describe_run(refused)
