"""examples/node: a Node.js producer and consumer-group worker, written from docs/protocol.md.

Installed by ``npm ci`` from the committed lockfile (the ``node_example`` fixture), run as
``node producer.js`` / ``node worker.js`` against a real broker.
"""

from __future__ import annotations

import base64
import json
import sys
import zlib
from pathlib import Path

import msgpack

from runtime.client import Producer
from tests.helpers import ROOT, BrokerProcess, python_env
from tests.interop import call, call_raw, describe_group, describe_run, read_topic, run


def test_node_producer_sends_keyed_events_that_land_where_the_key_hash_says(
        node_example: Path, broker: BrokerProcess) -> None:
    call(broker.api, "create_topic", topic="node.events", partitions=3)
    done = run(["node", str(node_example / "producer.js"), "--broker", broker.api,
                "--topic", "node.events", "--count", "500", "--batch", "40", "--in-flight", "4"])
    assert done.returncode == 0, describe_run(done)
    assert "sent 500 events to node.events, every one acknowledged" in done.stdout

    records = read_topic(broker.api, "node.events")
    assert len(records) == 500
    by_n = {}
    for partition, _offset, (value, key, headers, *_rest) in records:
        assert key == f"node-{value['n']}" and value["text"] == f"event {value['n']} from node"
        assert headers == {"source": "node"}
        # docs/protocol.md §5: a str key goes to crc32(utf-8 bytes) % partitions
        assert partition == zlib.crc32(key.encode()) % 3, key
        by_n[value["n"]] = partition
    assert sorted(by_n) == list(range(1, 501))


def test_node_worker_joins_polls_handles_and_commits(
        node_example: Path, broker: BrokerProcess) -> None:
    call(broker.api, "create_topic", topic="node.work", partitions=3)
    # bin values reach Node as bytes: b"\xff..." is not UTF-8, so the worker prints base64
    sent = [{"n": n, "blob": b"\xff" + n.to_bytes(2, "big")} for n in range(300)]
    with Producer(broker.api) as producer:
        for value in sent:
            producer.send("node.work", value, key=f"k{value['n']}")
    worker = ["node", str(node_example / "worker.js"), "--broker", broker.api,
              "--group", "node-workers", "--topics", "node.work", "--client-id", "node-test"]

    done = run([*worker, "--count", "300", "--timeout-ms", "20000"])
    assert done.returncode == 0, describe_run(done)
    handled = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(e["value"]["n"] for e in handled) == list(range(300))  # each exactly once
    for event in handled:
        assert event["topic"] == "node.work" and event["key"] == f"k{event['value']['n']}"
        blob = b"\xff" + event["value"]["n"].to_bytes(2, "big")
        assert event["value"]["blob"] == {"base64": base64.b64encode(blob).decode()}
    # offsets within a partition are handed out in order
    for part in range(3):
        offsets = [e["offset"] for e in handled if e["partition"] == part]
        assert offsets == sorted(offsets) and offsets == list(range(len(offsets)))

    group = describe_group(broker.api, "node-workers")
    assert group.members == [], "the worker left the group when it was done"
    assert len(group.partitions) == 3
    for gp in group.partitions:
        assert gp.committed == gp.end_offset and gp.lag == 0, gp

    # The commits hold: a second run gets only what was produced since, and stops on its
    # timeout (exit 3) because fewer events than --count arrive.
    with Producer(broker.api) as producer:
        for n in range(300, 305):
            producer.send("node.work", {"n": n}, key=f"k{n}")
    again = run([*worker, "--count", "10", "--timeout-ms", "1500"])
    assert again.returncode == 3, describe_run(again)
    assert "timed out: handled 5 of 10 events" in again.stderr
    assert sorted(json.loads(line)["value"]["n"] for line in again.stdout.splitlines()) \
        == list(range(300, 305))
    assert all(gp.lag == 0 for gp in describe_group(broker.api, "node-workers").partitions)


def test_node_worker_handles_values_with_map_keys_javascript_cannot_use(
        node_example: Path, broker: BrokerProcess) -> None:
    """A record value is any msgpack (§4.1): a map with bin or array keys, from a Python
    producer, must not make the poll reply undecodable for the JavaScript worker."""
    records = [[{"ok": 1}], [{b"bin-key": 2}], [{(1, 2): 3}], [{"ok": 4}]]
    body = msgpack.packb({"op": "produce", "id": 1, "topic": "odd.values",
                          "records": records})
    call_raw(broker.api, body)
    done = run(["node", str(node_example / "worker.js"), "--broker", broker.api,
                "--group", "odd", "--topics", "odd.values", "--count", "4",
                "--timeout-ms", "10000"])
    assert done.returncode == 0, describe_run(done)
    assert [json.loads(line)["value"] for line in done.stdout.splitlines()] == [
        {"ok": 1}, {"bin-key": 2}, {"[1,2]": 3}, {"ok": 4}]
    assert [gp.lag for gp in describe_group(broker.api, "odd").partitions] == [0]


def test_the_pizzeria_runs_with_the_node_producer_as_its_hall(node_example: Path) -> None:
    done = run([sys.executable, str(ROOT / "examples" / "pizzeria" / "demo.py"),
                "--orders", "300", "--hall", "node"], timeout=240, env=python_env(), cwd=ROOT)
    assert done.returncode == 0, describe_run(done)
    assert "hall (node): sent 300 orders" in done.stdout
    assert "every ordered item made exactly once: OK" in done.stdout
    assert "pizza lag 0, pasta lag 0, drinks lag 0, tally lag 0" in done.stdout
