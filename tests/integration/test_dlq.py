"""``rail dlq list|replay|purge`` as a user runs them, against a real broker (docs/dlq.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokerd import protocol as p
from runtime.client import Event, Producer
from runtime.connection import BrokerError
from runtime.dlq import (REPLAYED_FROM, Lease, dead_letter_headers, dlq_topic, load_record,
                         read_all, send_to_dlq)
from runtime.routing import connect
from tests.helpers import ROOT, BrokerProcess, python_env, start_broker, wait_for, written_lines


def rail(broker: BrokerProcess, *args: str, check: bool = True,
         prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Run the real CLI; ``prelude`` is Python run first in the same process (fault seams)."""
    entry = ["-m", "runtime.cli"] if not prelude else [
        "-c", f"{prelude}\nimport sys\nfrom runtime.cli import main\nsys.exit(main(sys.argv[1:]))"]
    env = {**python_env(), "RAIL_BROKER": broker.api}
    done = subprocess.run([sys.executable, *entry, *args], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def dead_letters(broker: BrokerProcess, count: int, topic: str = "orders", partitions: int = 1,
                 error: str = "no oven", start: int = 0) -> None:
    """Put ``count`` dead letters of ``topic`` in its DLQ, as a worker would."""
    with Producer(broker.api) as producer:
        producer._call(p.CreateTopic(topic=topic, partitions=1, exist_ok=True))
        producer._call(p.CreateTopic(topic=topic + ".dlq", partitions=partitions, exist_ok=True))
        for i in range(start, start + count):
            original = Event(topic, 0, i, {"n": i}, f"k{i}", {"trace": str(i)}, 0)
            producer.send(topic + ".dlq", original.value, key=original.key,
                          partition=i % partitions,
                          headers=dead_letter_headers(original, ValueError(error), 4))


def replayed(broker: BrokerProcess, topic: str = "orders") -> Counter[str]:
    """How many times each dead letter reached ``topic``, by its ``rail.replayed-from``."""
    conn = connect(broker.api)
    try:
        return Counter(str((e.headers or {}).get(REPLAYED_FROM)) for e in read_all(conn, topic))
    finally:
        conn.close()


def listed(broker: BrokerProcess, *args: str) -> list[dict]:
    return json.loads(rail(broker, "dlq", "list", "orders", "--json", *args).stdout)


def test_two_replays_send_each_dead_letter_once(broker: BrokerProcess) -> None:
    dead_letters(broker, 5)
    first = rail(broker, "dlq", "replay", "orders")
    assert "replayed 5 dead letters from orders.dlq to orders" in first.stderr
    second = rail(broker, "dlq", "replay", "orders")
    assert "replayed 0 dead letters" in second.stderr and "5 dead letters replayed before" in second.stderr
    sent = replayed(broker)
    assert sorted(sent) == [f"orders.dlq[0]@{i}" for i in range(5)] and set(sent.values()) == {1}
    assert all(d["replayed"] for d in listed(broker))


def test_again_replays_what_was_replayed_before(broker: BrokerProcess) -> None:
    dead_letters(broker, 3)
    rail(broker, "dlq", "replay", "orders")
    rail(broker, "dlq", "replay", "orders", "--offsets", "1..1", "--again")
    assert replayed(broker) == Counter({"orders.dlq[0]@0": 1, "orders.dlq[0]@1": 2,
                                        "orders.dlq[0]@2": 1})


def test_a_replayed_event_keeps_its_headers_and_says_where_it_came_from(
        broker: BrokerProcess) -> None:
    dead_letters(broker, 1)
    rail(broker, "dlq", "replay", "orders")
    out = rail(broker, "tail", "orders", "--from-beginning", "--json").stdout
    [event] = [json.loads(line) for line in out.splitlines()]
    assert (event["key"], event["value"]) == ("k0", {"n": 0})
    assert event["headers"] == {"trace": "0", REPLAYED_FROM: "orders.dlq[0]@0"}


def test_selective_replays_then_a_full_one_send_each_dead_letter_once(
        broker: BrokerProcess) -> None:
    dead_letters(broker, 4, error="no oven")
    dead_letters(broker, 2, error="no cheese", start=4)
    rail(broker, "dlq", "replay", "orders", "--offsets", "1..2")
    rail(broker, "dlq", "replay", "orders", "--error", "cheese")
    rail(broker, "dlq", "replay", "orders", "--match", '"n": 3')
    assert sorted(replayed(broker)) == [f"orders.dlq[0]@{i}" for i in (1, 2, 3, 4, 5)]
    assert [d["offset"] for d in listed(broker, "--pending")] == [0]
    rail(broker, "dlq", "replay", "orders")
    sent = replayed(broker)
    assert len(sent) == 6 and set(sent.values()) == {1}
    rail(broker, "dlq", "replay", "orders", "--offsets", "0..5")
    assert replayed(broker) == sent


def test_a_dry_run_shows_the_selection_and_sends_nothing(broker: BrokerProcess) -> None:
    dead_letters(broker, 3, partitions=3)
    done = rail(broker, "dlq", "replay", "orders", "--partition", "1", "--dry-run")
    assert "orders.dlq[1]@0" in done.stdout and "orders.dlq[0]" not in done.stdout
    assert "would replay 1 dead letter" in done.stderr
    assert replayed(broker) == Counter()
    assert not any(d["replayed"] for d in listed(broker))


def test_a_partition_replay_moves_only_that_partitions_cursor(broker: BrokerProcess) -> None:
    dead_letters(broker, 4, partitions=2)
    rail(broker, "dlq", "replay", "orders", "--partition", "1")
    assert sorted(replayed(broker)) == ["orders.dlq[1]@0", "orders.dlq[1]@1"]
    rail(broker, "dlq", "replay", "orders")
    sent = replayed(broker)
    assert len(sent) == 4 and set(sent.values()) == {1}


def test_list_selects_by_partition_offsets_text_and_error(broker: BrokerProcess) -> None:
    dead_letters(broker, 6, partitions=2)
    dead_letters(broker, 1, partitions=2, error="burnt", start=6)
    assert len(listed(broker)) == 7
    assert {d["partition"] for d in listed(broker, "--partition", "1")} == {1}
    assert [d["offset"] for d in listed(broker, "--partition", "0", "--offset", "1..2")] == [1, 2]
    assert [d["value"] for d in listed(broker, "--grep", '"n": 5')] == [{"n": 5}]
    [burnt] = listed(broker, "--error", "burnt")
    assert burnt["source"] == {"topic": "orders", "partition": 0, "offset": 6}
    assert (burnt["attempts"], burnt["error"], burnt["replayed"]) == (4, "ValueError: burnt",
                                                                      False)
    text = rail(broker, "dlq", "list", "orders", "--error", "burnt").stdout
    assert "1 dead letter in orders.dlq" in text
    assert "orders.dlq[0]@3  orders[0]@6 after 4 attempts: ValueError: burnt" in text


def test_bad_offsets_and_a_missing_dlq_are_one_line_errors(broker: BrokerProcess) -> None:
    done = rail(broker, "dlq", "replay", "nothing", check=False)
    assert done.returncode == 1 and "no dead-letter topic nothing.dlq" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    dead_letters(broker, 1)
    bad = rail(broker, "dlq", "replay", "orders", "--offsets", "5..2", check=False)
    assert bad.returncode == 2 and "A <= B" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    nowhere = rail(broker, "dlq", "purge", "orders", "-p", "3", "--all", "--yes", check=False)
    assert nowhere.returncode == 2 and "orders.dlq has no partition 3" in nowhere.stderr


def test_a_topic_with_a_249_character_name_has_a_dlq_that_replays(broker: BrokerProcess) -> None:
    topic = "t" * 249
    with Producer(broker.api) as producer:
        original = Event(topic, 0, 3, {"n": 1}, None, None, 0)
        send_to_dlq(producer, original, ValueError("no oven"), 4)
    dlq = dlq_topic(topic)
    assert json.loads(rail(broker, "dlq", "list", topic, "--json").stdout)[0]["topic"] == dlq
    rail(broker, "dlq", "replay", topic)
    rail(broker, "dlq", "replay", dlq)
    assert replayed(broker, topic) == Counter({f"{dlq}[0]@0": 1})


# -- crash safety ------------------------------------------------------------------------
KILL = "import os, signal\nKILL = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"


def test_a_replay_killed_after_sending_and_before_recording_sends_nothing_twice(
        broker: BrokerProcess) -> None:
    dead_letters(broker, 50)
    killed = rail(broker, "dlq", "replay", "orders", check=False,
                  prelude=KILL + "import runtime.dlq.ledger as d\nd.record_replays = KILL")
    assert killed.returncode == -signal.SIGKILL
    assert len(replayed(broker)) == 50  # all sent, none recorded
    dry = rail(broker, "dlq", "replay", "orders", "--dry-run")
    assert "would replay 0 dead letters" in dry.stderr and "had sent 50" in dry.stderr
    again = rail(broker, "dlq", "replay", "orders")
    assert "an interrupted replay had sent 50 dead letters" in again.stderr
    assert "replayed 0 dead letters" in again.stderr
    sent = replayed(broker)
    assert len(sent) == 50 and set(sent.values()) == {1}
    assert all(d["replayed"] and d["replayed_to"] for d in listed(broker))


def test_a_replay_killed_half_way_through_sending_sends_the_rest_once(
        broker: BrokerProcess) -> None:
    dead_letters(broker, 40)
    half = KILL + textwrap.dedent("""
        import runtime.dlq.replayer as d
        send = d.send_replays
        def half(producer, result, lease=None):
            result.selected = result.selected[:17]
            send(producer, result, lease)
            KILL()
        d.send_replays = half
    """)
    killed = rail(broker, "dlq", "replay", "orders", check=False, prelude=half)
    assert killed.returncode == -signal.SIGKILL and len(replayed(broker)) == 17
    rail(broker, "dlq", "replay", "orders")
    sent = replayed(broker)
    assert len(sent) == 40 and set(sent.values()) == {1}


def test_a_replay_killed_before_sending_anything_sends_all_once_when_rerun(
        broker: BrokerProcess) -> None:
    dead_letters(broker, 10)
    killed = rail(broker, "dlq", "replay", "orders", check=False,
                  prelude=KILL + "import runtime.dlq.replayer as d\nd.send_replays = KILL")
    assert killed.returncode == -signal.SIGKILL and replayed(broker) == Counter()
    rail(broker, "dlq", "replay", "orders")
    sent = replayed(broker)
    assert len(sent) == 10 and set(sent.values()) == {1}


def test_a_replay_killed_with_kill_9_at_a_random_moment_then_rerun_sends_nothing_twice(
        broker: BrokerProcess) -> None:
    total = 20_000
    dead_letters(broker, total)
    conn = connect(broker.api)
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "dlq", "replay", "orders"],
                            env={**python_env(), "RAIL_BROKER": broker.api}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def some_sent() -> bool:
            meta = conn.call(p.Metadata(topics=["orders"]))
            return meta.topics[0].partitions[0].end_offset > 0 or proc.poll() is not None
        wait_for(some_sent, timeout=60, interval=0.005, what="the replay to start sending")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
        conn.close()
    rail(broker, "dlq", "replay", "orders")
    sent = replayed(broker)
    assert len(sent) == total and set(sent.values()) == {1}


def test_two_replays_at_once_send_each_dead_letter_once(broker: BrokerProcess) -> None:
    total = 5000
    dead_letters(broker, total)
    env = {**python_env(), "RAIL_BROKER": broker.api}
    procs = [subprocess.Popen([sys.executable, "-m", "runtime.cli", "dlq", "replay", "orders"],
                              env=env, cwd=ROOT, text=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(2)]
    try:
        errors = [proc.communicate(timeout=60)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
    assert [proc.returncode for proc in procs] == [0, 0], errors
    assert sorted(e.splitlines()[-1].split(" from ")[0] for e in errors) == [
        "replayed 0 dead letters", f"replayed {total:,} dead letters"]
    sent = replayed(broker)
    assert len(sent) == total and set(sent.values()) == {1}


def test_a_replay_waits_for_a_running_one_then_gives_up_in_one_line(
        broker: BrokerProcess) -> None:
    dead_letters(broker, 2)
    conn = connect(broker.api)
    lease = Lease(broker.api, "orders.dlq")
    lease.acquire(conn)
    try:
        done = rail(broker, "dlq", "replay", "orders", "--wait", "1", check=False)
    finally:
        lease.release(conn)
        conn.close()
    assert done.returncode == 1 and replayed(broker) == Counter()
    assert done.stderr.strip() == ("rail dlq replay: REPLAY_RUNNING: another replay of "
                                   "orders.dlq is running: try again when it is done")
    rail(broker, "dlq", "replay", "orders", "--wait", "0")
    assert len(replayed(broker)) == 2


def test_a_replay_that_lost_its_lease_stops_before_sending(broker: BrokerProcess) -> None:
    dead_letters(broker, 1)
    conn = connect(broker.api)
    lease = Lease(broker.api, "orders.dlq")
    try:
        lease.acquire(conn)
        lease._stop.set()  # freeze its heartbeats, as a SIGSTOP would
        assert lease._beats is not None
        lease._beats.join(5)
        wait_for(lambda: not conn.call(p.DescribeGroup(group=lease.group)).members,
                 timeout=15, what="the lease's session to expire")
        lease._stop.clear()
        lease._beat()  # woken up: the first beat learns the lease is gone
        with pytest.raises(BrokerError, match="lost its lease"):
            lease.check()
    finally:
        lease.release(conn)
        conn.close()


# -- re-failures -------------------------------------------------------------------------
FAILS_UNTIL_FIXED = """
import os
def handle(event, ctx):
    with open(os.environ["OUT"], "a") as out:
        out.write(repr(event.value) + "\\n")
    if event.value.get("bad") and not os.path.exists(os.environ["FIXED"]):
        raise ValueError("no oven")
"""


@pytest.fixture
def worker(broker: BrokerProcess, tmp_path: Path) -> Iterator[Path]:
    """A worker on ``orders`` that fails on ``{"bad": true}`` until the file FIXED exists."""
    script = tmp_path / "oven.py"
    script.write_text(FAILS_UNTIL_FIXED)
    env = {**python_env(), "OUT": str(tmp_path / "handled"), "FIXED": str(tmp_path / "fixed")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.worker", str(script), "--broker", broker.api,
         "--group", "oven", "--topics", "orders", "--retries", "0"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield tmp_path
    finally:
        proc.kill()
        proc.wait(10)


def handled(tmp: Path) -> list[str]:
    path = tmp / "handled"
    return written_lines(path)


def dlq_size(broker: BrokerProcess) -> int:
    conn = connect(broker.api)
    try:
        return len(read_all(conn, "orders.dlq"))
    finally:
        conn.close()


def test_a_replay_that_fails_again_is_listed_as_a_refailure_of_the_first(
        broker: BrokerProcess, worker: Path) -> None:
    with Producer(broker.api) as producer:
        producer._call(p.CreateTopic(topic="orders", partitions=1, exist_ok=True))
        producer.send("orders", {"bad": True}, key="t1")
    wait_for(lambda: dlq_size(broker) == 1, timeout=30, what="the first dead letter")
    rail(broker, "dlq", "replay", "orders")
    wait_for(lambda: dlq_size(broker) == 2, timeout=30, what="the re-failure")
    first, second = listed(broker)
    assert first["replayed"] and first["refailure_of"] is None
    assert first["failed_again_as"] == ["orders.dlq[0]@1"]
    assert second["refailure_of"] == "orders.dlq[0]@0" and not second["replayed"]
    text = rail(broker, "dlq", "list", "orders").stdout
    assert "1 of them re-failures" in text and "(re-failure of orders.dlq[0]@0)" in text
    assert "failed again as orders.dlq[0]@1]" in text
    [pending] = listed(broker, "--pending")  # what is left to do: one event, not two
    assert pending["offset"] == 1


def test_an_event_fixed_then_replayed_twice_is_handled_once_more(
        broker: BrokerProcess, worker: Path) -> None:
    with Producer(broker.api) as producer:
        producer._call(p.CreateTopic(topic="orders", partitions=1, exist_ok=True))
        producer.send("orders", {"bad": True}, key="t1")
    wait_for(lambda: dlq_size(broker) == 1, timeout=30, what="the dead letter")
    (worker / "fixed").touch()
    rail(broker, "dlq", "replay", "orders")
    rail(broker, "dlq", "replay", "orders")
    wait_for(lambda: len(handled(worker)) >= 2, timeout=30, what="the replayed event handled")
    with Producer(broker.api) as producer:  # a marker: once handled, everything before was
        producer.send("orders", {"marker": True})
    wait_for(lambda: "{'marker': True}" in handled(worker), timeout=30, what="the marker")
    assert handled(worker).count("{'bad': True}") == 2  # the failure, then one replay
    assert dlq_size(broker) == 1


# -- purge -------------------------------------------------------------------------------
def test_purge_needs_yes_and_deletes_nothing_without_it(broker: BrokerProcess) -> None:
    dead_letters(broker, 3)
    done = rail(broker, "dlq", "purge", "orders", "--all", check=False)
    assert done.returncode == 1 and "would delete 3 dead letters" in done.stderr
    assert len(listed(broker)) == 3


def test_purge_before_an_offset_keeps_the_rest(broker: BrokerProcess) -> None:
    dead_letters(broker, 5)
    done = rail(broker, "dlq", "purge", "orders", "--before", "3", "--yes")
    assert "purged 3 dead letters from orders.dlq" in done.stderr
    assert [d["offset"] for d in listed(broker)] == [3, 4]
    rail(broker, "dlq", "replay", "orders")
    assert sorted(replayed(broker)) == ["orders.dlq[0]@3", "orders.dlq[0]@4"]


def test_purge_all_empties_the_list_and_survives_a_broker_restart(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "data")
    try:
        dead_letters(broker, 4, partitions=2)
        rail(broker, "dlq", "replay", "orders", "--offsets", "0..0")
        rail(broker, "dlq", "purge", "orders", "--all", "--yes")
        assert listed(broker) == []
        conn = connect(broker.api)
        try:  # the ledger forgets purged dead letters (tombstones, for compaction)
            assert load_record(conn, "orders.dlq").replayed == {}
        finally:
            conn.close()
        broker.stop()
        broker = start_broker(tmp_path / "data")
        assert listed(broker) == []
        assert "0 dead letters in orders.dlq" in rail(broker, "dlq", "list", "orders").stdout
        dead_letters(broker, 1, start=9)  # new dead letters after a purge are replayed
        rail(broker, "dlq", "replay", "orders")
        assert replayed(broker)["orders.dlq[0]@2"] == 1
    finally:
        broker.stop()


def test_a_dlq_deleted_and_created_again_is_not_taken_for_replayed(broker: BrokerProcess) -> None:
    dead_letters(broker, 2)
    rail(broker, "dlq", "replay", "orders")
    rail(broker, "topics", "delete", "orders.dlq")
    dead_letters(broker, 2, start=5)  # offsets 0 and 1 again, other dead letters
    assert [d["replayed"] for d in listed(broker)] == [False, False]
    rail(broker, "dlq", "replay", "orders")
    assert replayed(broker) == Counter({"orders.dlq[0]@0": 2, "orders.dlq[0]@1": 2})


def test_a_cursor_group_deleted_by_hand_makes_nothing_replay_twice(broker: BrokerProcess) -> None:
    dead_letters(broker, 3)
    rail(broker, "dlq", "replay", "orders")
    described = json.loads(rail(broker, "groups", "describe", "rail.dlq-replay.orders.dlq",
                                "--json").stdout)
    assert [(x["committed"], x["lag"]) for x in described["partitions"]] == [(3, 0)]
    conn = connect(broker.api)
    try:
        conn.call(p.DeleteGroup(group="rail.dlq-replay.orders.dlq"))
    finally:
        conn.close()
    rail(broker, "dlq", "replay", "orders")
    sent = replayed(broker)
    assert len(sent) == 3 and set(sent.values()) == {1}
