"""``rail send/tail/topics/groups/dlq`` as a user runs them, against a real broker."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from brokerd import protocol as p
from runtime.cli import build_parser
from runtime.client import Consumer, Event, Producer
from runtime.dlq import dead_letter_headers
from runtime.routing import connect
from tests.helpers import ROOT, BrokerProcess, python_env, wait_for
from tests.integration.cli import RAIL, create_topic, one_line, rail, rail_env


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
    assert "sent 5,000 events to numbers" in done.stderr and "/s" in done.stderr
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
    assert "1 dead letter in orders.dlq" in listed and "ValueError: no oven" in listed
    assert "orders[0]@7 after 4 attempts" in listed
    assert len(json.loads(rail(broker, "dlq", "list", "orders", "--json").stdout)) == 1
    rail(broker, "dlq", "replay", "orders")
    out = rail(broker, "tail", "orders", "--from-beginning", "--json").stdout
    [event] = [json.loads(line) for line in out.splitlines()]
    headers = {k: v for k, v in event["headers"].items() if k != "rail.replayed-from"}
    assert (event["key"], event["value"], headers) == ("t3", {"pizza": 1}, {"trace": "x"})


def test_an_unreachable_broker_is_one_line_and_nonzero(broker: BrokerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "topics", "--broker", "tcp://127.0.0.1:1"],
        env=python_env(), cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "is it running" in done.stderr


def test_an_endpoint_zeromq_cannot_use_is_one_line_and_nonzero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "topics", "--broker", "localhost:7400"],
        env=python_env(), cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "tcp://HOST:PORT" in done.stderr


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


def commit(broker: BrokerProcess, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit as a tool does (no member id): the group has no live members."""
    conn = connect(broker.api)  # to the group's coordinator, on a cluster too
    try:
        conn.call(p.Commit(group=group, offsets=[(topic, part, off)
                                                 for part, off in offsets.items()]))
    finally:
        conn.close()


def described(broker: BrokerProcess, group: str) -> dict:
    return json.loads(rail(broker, "groups", "describe", group, "--json").stdout)


def committed(broker: BrokerProcess, group: str) -> dict[int, int | None]:
    return {x["partition"]: x["committed"] for x in described(broker, group)["partitions"]}


def test_describing_an_unknown_group_is_one_line_and_nonzero(broker: BrokerProcess) -> None:
    done = rail(broker, "groups", "describe", "nosuchgroup", check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert one_line(done.stderr) == ("rail groups describe: no group nosuchgroup: rail groups "
                                     "lists the groups there are")


def test_messages_say_1_partition_and_1_event(broker: BrokerProcess) -> None:
    assert rail(broker, "topics", "create", "solo", "--partitions", "1").stdout == \
        "created topic solo with 1 partition\n"
    rail(broker, "send", "solo", "one")
    assert "topic solo: 1 partition, 1 event" in rail(broker, "topics", "describe",
                                                       "solo").stdout
    commit(broker, "g", "solo", {0: 1})
    assert "g: empty, generation 0, 0 members, lag 0" in rail(broker, "groups", "describe",
                                                             "g").stdout


def test_reset_offsets_prints_a_plan_and_changes_nothing_without_execute(
        broker: BrokerProcess) -> None:
    create_topic(broker, "orders", 2)
    with Producer(broker.api) as producer:
        for part in (0, 1):
            for n in range(10):
                producer.send("orders", n, partition=part, timestamp=1000 * (n + 1))
    commit(broker, "kitchen", "orders", {0: 5, 1: 8})
    done = rail(broker, "groups", "reset-offsets", "kitchen", "--topic", "orders",
                "--to-earliest")
    assert done.stdout.splitlines()[1:] == [
        f"{'orders':24} {0:>9} {5:>10} {0:>10}", f"{'orders':24} {1:>9} {8:>10} {0:>10}"]
    assert "dry run: nothing changed" in done.stderr
    assert committed(broker, "kitchen") == {0: 5, 1: 8}

    def plan(*how: str) -> list[int]:
        out = rail(broker, "groups", "reset-offsets", "kitchen", "--topic", "orders", *how,
                   "--json").stdout
        return [m["new"] for m in json.loads(out)]
    assert plan("--to-latest") == [10, 10]
    assert plan("--to-offset", "7") == [7, 7]
    assert plan("--to-offset", "99") == [10, 10]  # clamped to [start, end], as Kafka does
    assert plan("--shift-by", "-6") == [0, 2]
    assert plan("--shift-by", "4") == [9, 10]
    assert plan("--to-time", "3000") == [2, 2]
    assert plan("--to-time", "1970-01-01T00:00:04Z", "--partition", "1") == [3]

    rail(broker, "groups", "reset-offsets", "kitchen", "--topic", "orders", "--partition",
         "1", "--shift-by", "-3", "--execute")
    assert committed(broker, "kitchen") == {0: 5, 1: 5}


def test_reset_offsets_is_refused_while_the_group_has_live_members(
        broker: BrokerProcess) -> None:
    create_topic(broker, "orders", 1)
    with Consumer(broker.api, group="kitchen", topics=["orders"]):
        done = rail(broker, "groups", "reset-offsets", "kitchen", "--topic", "orders",
                    "--to-earliest", "--execute", check=False)
        assert done.returncode == 1
        assert one_line(done.stderr).startswith(
            "rail groups reset-offsets: group kitchen has 1 live member: stop them")
        dry = rail(broker, "groups", "reset-offsets", "kitchen", "--topic", "orders",
                   "--to-latest")
        assert "--execute will be refused" in dry.stderr
    wait_for(lambda: described(broker, "kitchen")["state"] == "empty", what="group empty")
    rail(broker, "groups", "reset-offsets", "kitchen", "--topic", "orders", "--to-latest",
         "--execute")


def test_groups_delete_forgets_a_stopped_group_and_refuses_a_live_one(
        broker: BrokerProcess) -> None:
    create_topic(broker, "orders", 1)
    commit(broker, "old", "orders", {0: 0})
    with Consumer(broker.api, group="busy", topics=["orders"]):
        live = rail(broker, "groups", "delete", "busy", check=False)
        assert live.returncode == 1 and "group busy has live members" in one_line(live.stderr)
    assert rail(broker, "groups", "delete", "old").stdout == "deleted group old\n"
    assert "old" not in [g["group"] for g in json.loads(rail(broker, "groups", "--json").stdout)]
    again = rail(broker, "groups", "delete", "old", check=False)
    assert again.returncode == 1 and "no group old" in one_line(again.stderr)


def test_topics_alter_grows_partitions_and_never_shrinks(broker: BrokerProcess) -> None:
    create_topic(broker, "orders", 2)
    done = rail(broker, "topics", "alter", "orders", "--partitions", "5")
    assert done.stdout == "topic orders now has 5 partitions (was 2)\n"
    assert "hash % 5" in done.stderr
    assert len(rail_topic(broker, "orders")["partitions"]) == 5
    rail(broker, "send", "orders", "x", "--key", "k")  # the new partitions take events
    smaller = rail(broker, "topics", "alter", "orders", "--partitions", "3", check=False)
    assert smaller.returncode == 1 and "can only grow" in one_line(smaller.stderr)


def test_version_names_the_package_and_the_protocol(broker: BrokerProcess) -> None:
    import importlib.metadata
    out = rail(broker, "--version").stdout
    assert out == (f"rail {importlib.metadata.version('rail')} "
                   f"(protocol {p.PROTOCOL_VERSION})\n")


def test_bash_sources_the_completion_script_and_completes_commands(
        broker: BrokerProcess) -> None:
    script = r'''
source <("$@" completion bash) || exit 9
complete -p rail
complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _rail; echo "${COMPREPLY[*]}"; }
complete_words rail gr
complete_words rail groups re
complete_words rail groups reset-offsets g --to-e
complete_words rail tail t -o -5 --fo
complete_words rail completion ''
'''
    done = subprocess.run(["bash", "-c", script, "-", *RAIL], env=rail_env(broker), cwd=ROOT,
                          text=True, capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines() == ["complete -F _rail rail", "groups", "reset-offsets",
                                        "--to-earliest", "--follow --format", "bash"]




def test_every_argument_of_every_command_has_help() -> None:
    root = build_parser()
    [commands] = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    missing = []
    todo = list(commands.choices.items())
    while todo:
        name, parser = todo.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((f"{name} {n}", child) for n, child in action.choices.items())
            elif not action.help:
                missing.append(f"{name} {action.dest}")
    assert missing == []
