"""``rail send/tail/topics/groups/dlq`` as a user runs them, against a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from brokerd import protocol as p
from runtime.client import Consumer, Producer
from runtime.dlq import dead_letter_headers
from runtime.client import Event
from tests.helpers import ROOT, BrokerProcess, python_env

def rail(broker: BrokerProcess, *args: str, input: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    entry = ["-m", "runtime.cli"]
    env = {**python_env(), "RAIL_BROKER": broker.api}
    done = subprocess.run([sys.executable, *entry, *args], env=env, cwd=ROOT, text=True,
                          capture_output=True, input=input, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_send_then_tail_shows_json_and_bytes_values(broker: BrokerProcess) -> None:
    rail(broker, "topics", "create", "orders", "--partitions", "2")
    rail(broker, "send", "orders", '{"pizza": 2}', "--key", "t7", "--header", "src=hall")
    rail(broker, "send", "orders", "plain text")
    out = rail(broker, "tail", "orders", "--from-beginning", "--json").stdout
    events = [json.loads(line) for line in out.splitlines()]
    by_value = {json.dumps(e["value"]): e for e in events}
    assert by_value['{"pizza": 2}']["key"] == "t7"
    assert by_value['{"pizza": 2}']["headers"] == {"src": "hall"}
    assert '"plain text"' in by_value
    human = rail(broker, "tail", "orders").stdout
    assert "key=\"t7\"" in human and "plain text" in human


def test_send_file_sends_each_line_and_reports_the_rate(broker: BrokerProcess,
                                                         tmp_path: Path) -> None:
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(5000)))
    done = rail(broker, "send", "numbers", "--file", str(lines))
    assert "sent 5000 events to numbers" in done.stderr and "/s" in done.stderr
    out = rail(broker, "tail", "numbers", "--from-beginning", "--json").stdout
    assert sorted(json.loads(x)["value"]["n"] for x in out.splitlines()) == list(range(5000))
    last = rail(broker, "tail", "numbers", "--json").stdout.splitlines()
    assert 0 < len(last) <= 10 * len(rail_topic(broker, "numbers")["partitions"])


def rail_topic(broker: BrokerProcess, name: str) -> dict:
    return json.loads(rail(broker, "topics", "describe", name, "--json").stdout)


def test_topics_create_list_describe_delete(broker: BrokerProcess) -> None:
    assert "created topic kitchen with 4 partitions" in rail(
        broker, "topics", "create", "kitchen", "--partitions", "4").stdout
    listed = json.loads(rail(broker, "topics", "list", "--json").stdout)
    assert [t["name"] for t in listed] == ["kitchen"]
    assert len(rail_topic(broker, "kitchen")["partitions"]) == 4
    assert "kitchen" in rail(broker, "topics").stdout
    again = rail(broker, "topics", "create", "kitchen", check=False)
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1
    rail(broker, "topics", "delete", "kitchen")
    assert json.loads(rail(broker, "topics", "list", "--json").stdout) == []


def test_groups_describe_shows_committed_offsets_and_lag(broker: BrokerProcess) -> None:
    with Producer(broker.api) as producer:
        producer._call(p.CreateTopic(topic="orders", partitions=1))
        for i in range(10):
            producer.send("orders", i)
    with Consumer(broker.api, group="pizza", topics=["orders"]) as consumer:
        got = consumer.poll(5.0)
        consumer.commit({("orders", 0): 4})
        assert got
    groups = json.loads(rail(broker, "groups", "--json").stdout)
    assert [g["group"] for g in groups] == ["pizza"]
    described = json.loads(rail(broker, "groups", "describe", "pizza", "--json").stdout)
    part = described["partitions"][0]
    assert (part["committed"], part["end_offset"], part["lag"]) == (4, 10, 6)
    assert "pizza" in rail(broker, "groups", "describe", "pizza").stdout


def test_dlq_list_and_replay_send_events_back_without_rail_headers(
        broker: BrokerProcess) -> None:
    with Producer(broker.api) as producer:
        producer._call(p.CreateTopic(topic="orders", partitions=1))
        original = Event("orders", 0, 7, {"pizza": 1}, "t3", {"trace": "x"}, 0)
        producer.send("orders.dlq", original.value, key=original.key,
                      headers=dead_letter_headers(original, ValueError("no oven"), 4))
    listed = rail(broker, "dlq", "list", "orders").stdout
    assert "1 dead letters in orders.dlq" in listed and "ValueError: no oven" in listed
    assert "orders[0]@7 after 4 attempts" in listed
    assert len(json.loads(rail(broker, "dlq", "list", "orders", "--json").stdout)) == 1
    rail(broker, "dlq", "replay", "orders")
    out = rail(broker, "tail", "orders", "--from-beginning", "--json").stdout
    [event] = [json.loads(line) for line in out.splitlines()]
    assert (event["key"], event["value"], event["headers"]) == ("t3", {"pizza": 1},
                                                                 {"trace": "x"})


def test_an_unreachable_broker_is_one_line_and_nonzero(broker: BrokerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "topics", "--broker", "tcp://127.0.0.1:1"],
        env=python_env(), cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "is it running" in done.stderr


def test_rail_run_runs_a_worker_in_the_foreground(broker: BrokerProcess) -> None:
    import signal
    rail(broker, "send", "orders", '{"pizza": 1}')
    entry = ["-m", "runtime.cli"]
    proc = subprocess.Popen(
        [sys.executable, *entry, "run", str(ROOT / "workers" / "printer.py"), "--topics",
         "orders"], env={**python_env(), "RAIL_BROKER": broker.api}, cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith('orders[')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    described = json.loads(rail(broker, "groups", "describe", "printer", "--json").stdout)
    assert described["lag"] == 0
