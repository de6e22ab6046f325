"""``rail`` supervisor commands as a user meets them: errors that say why, ``rail logs``,
``rail status NAME``, ``rail reload``, exact PROCESSED after kill -9."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from brokerd import protocol as p
from runtime.client import Producer
from runtime.connection import Connection
from tests.helpers import ROOT, python_env, wait_for
from tests.integration.test_supervisor import APPENDER, Rail, all_gone, appender_toml
from tests.integration.wire import RawClient


@pytest.fixture
def rail(tmp_path: Path) -> Iterator[Rail]:
    r = Rail(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def test_register_with_an_invalid_topic_says_what_the_broker_said(rail: Rail) -> None:
    rail.write_toml("")
    rail.up()
    script = rail.script("w.py", APPENDER.format(out=str(rail.out)))
    done = rail.rail("register", "x", str(script), "--topics", "../etc")
    assert done.returncode == 1
    assert "INVALID_TOPIC" in done.stderr and "'../etc'" in done.stderr, done.stderr
    assert "see rail status" not in done.stderr and done.stderr.count("\n") == 1
    assert rail.status()["workers"] == []


def test_rail_up_with_the_broker_port_taken_prints_the_cause(rail: Rail) -> None:
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", int(rail.api.rsplit(":", 1)[1])))
        squatter.listen()
        rail.write_toml("")
        done = subprocess.run([sys.executable, "-m", "runtime.cli", "up", "-c",
                               str(rail.folder / "rail.toml")], capture_output=True, text=True,
                              env=python_env(), cwd=ROOT, timeout=60)
    finally:
        squatter.close()
    assert done.returncode == 76, done.stderr
    assert "Address already in use" in done.stderr and rail.api in done.stderr, done.stderr


def test_register_and_scale_warn_when_replicas_outnumber_partitions(rail: Rail) -> None:
    rail.write_toml("", topics="[topics.orders]\npartitions = 2\n")
    rail.up()
    script = rail.script("w.py", APPENDER.format(out=str(rail.out)))
    done = rail.rail("register", "x", str(script), "--topics", "orders", "--replicas", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "registered x (3 replicas)\n"
    assert done.stderr == ("rail: warning: 3 replicas but orders has 2 partitions: "
                           "1 replica will be idle\n")
    done = rail.rail("scale", "x", "1")
    assert (done.returncode, done.stdout, done.stderr) == (0, "x scaled to 1 replica\n", "")
    done = rail.rail("scale", "x", "4")
    assert "4 replicas but orders has 2 partitions: 2 replicas will be idle" in done.stderr


def test_replicas_sharing_a_log_prefix_each_line_with_the_replica_that_wrote_it(
        rail: Rail) -> None:
    rail.script("talk.py", "def handle(event, ctx):\n    print('value', event.value)\n")
    rail.write_toml('[workers.talk]\nscript = "talk.py"\ntopics = ["orders"]\nreplicas = 2\n')
    rail.up()
    wait_for(lambda: rail.running("talk", 2), 20, what="2 talk replicas")
    # Running is not joined: under load one replica took every event before the other was
    # in the group.  Send once both hold partitions.
    raw = RawClient(rail.api)
    try:
        wait_for(lambda: [m["assignment"] != [] for m in
                          raw.ok("describe_group", group="talk")["members"]] == [True, True],
                 30, what="both talk replicas assigned partitions")
    finally:
        raw.close()
    rail.send(range(60))
    log = rail.folder / "data" / "logs" / "talk.log"
    wait_for(lambda: log.read_text().count(" value ") == 60, 20, what="60 values printed")
    lines = log.read_text().splitlines()
    assert all(re.match(r"talk\.[01] \| ", line) for line in lines), lines
    values = [line for line in lines if " value " in line]
    assert {line[:7] for line in values} == {"talk.0 ", "talk.1 "}
    assert sorted(int(line.rsplit(" ", 1)[1]) for line in values) == list(range(60))
    for args in (("status",), ("status", "talk"), ("logs", "talk")):  # as in: rail ... | head
        reader_gone = subprocess.Popen([sys.executable, "-m", "runtime.cli", *args, "--control",
                                        rail.control], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env=python_env(), cwd=ROOT)
        assert reader_gone.stdout is not None and reader_gone.stderr is not None
        reader_gone.stdout.close()
        assert reader_gone.stderr.read() == b""
        assert reader_gone.wait(30) == 141, args


def test_processed_is_exact_after_kill_9_and_survives_rail_up(rail: Rail) -> None:
    rail.write_toml(appender_toml(rail, replicas=2))
    rail.up()
    pizza = wait_for(lambda: rail.running("pizza", 2), 20, what="2 pizza replicas")
    rail.send(range(300))
    # Kill both replicas the moment the work is committed: the health beat that would have
    # reported the last events never comes.
    wait_for(lambda: rail.worker("pizza")["lag"] == 0 and len(rail.seen()) >= 300, 20,
             interval=0.005, what="300 events handled and committed")
    for pid in pizza["pids"]:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (w := rail.running("pizza", 2)) and w["restarts"] == 2, 20,
             what="both replicas restarted")
    assert rail.worker("pizza")["processed"] == 300
    assert rail.stop() == 0
    rail.up()
    wait_for(lambda: rail.running("pizza", 2), 20, what="2 pizza replicas again")
    assert rail.worker("pizza")["processed"] == 300
    rail.send(range(300, 350))
    wait_for(lambda: rail.worker("pizza")["processed"] == 350, 20, what="350 processed")


GATED = """
import os, time

def handle(event, ctx):
    deadline = time.monotonic() + 60
    while not os.path.exists({gate!r}) and time.monotonic() < deadline:
        time.sleep(0.02)
"""


def test_status_name_shows_a_row_per_replica_with_what_it_is_handling_now(rail: Rail) -> None:
    gate = rail.folder / "gate"
    rail.script("slow.py", GATED.format(gate=str(gate)))
    rail.write_toml('[workers.slow]\nscript = "slow.py"\ntopics = ["orders"]\nreplicas = 2\n'
                    "backoff_s = 0.05\n")
    rail.up()
    slow = wait_for(lambda: rail.running("slow", 2), 20, what="2 slow replicas")
    with Producer(rail.api) as producer:
        producer.send("orders", b"x", partition=1)
        producer.flush()

    def handling() -> dict[str, Any] | None:
        done = rail.rail("status", "slow", "--json")
        assert done.returncode == 0, done.stderr
        rows = msgspec.json.decode(done.stdout)["workers"][0]["processes"]
        busy = [r for r in rows if r["handling"] and r["handling"]["for_s"] >= 1.0]
        return busy[0] if busy else None
    busy = wait_for(handling, 20, what="a replica handling orders[1]@0 for a second")
    assert busy["handling"]["topic"] == "orders" and busy["handling"]["partition"] == 1
    assert busy["handling"]["offset"] == 0 and busy["pid"] in slow["pids"]
    table = rail.rail("status", "slow").stdout
    assert re.search(rf"^{busy['replica']}\s+{busy['pid']}\s+running\s+\S+\s+0\s+[\d.]+\s+\d+M"
                     r"\s+orders\[1\]@0 for \d+\.\ds$", table, re.M), table
    gate.touch()
    wait_for(lambda: rail.worker("slow")["processed"] == 1, 20, what="the event done")
    os.kill(busy["pid"], signal.SIGKILL)
    wait_for(lambda: rail.running("slow", 2), 20, what="the killed replica back")
    last = rail.rail("logs", "slow", "--replica", str(busy["replica"]), "-n", "100").stdout
    assert re.search(rf"^slow\.{busy['replica']} \| [\d: -]+ rail: pid {busy['pid']} exited "
                     r"with signal SIGKILL$", last, re.M), last
    rows = rail.worker("slow")["processes"]
    assert [r["restarts"] for r in rows] == [int(r["replica"] == busy["replica"]) for r in rows]
    assert all(r["handling"] is None for r in rows)
    missing = rail.rail("status", "nobody")
    assert missing.returncode == 1 and "no worker named 'nobody'" in missing.stderr


CHATTY = """
def handle(event, ctx):
    print("value", event.value, "x" * 1000)
    with open({out!r}, "a") as f:
        f.write(f"{{ctx.member_id}} {{event.value}}\\n")
"""


def test_rail_logs_tails_one_replica_and_follows_it_across_rotation(rail: Rail) -> None:
    rail.script("talk.py", CHATTY.format(out=str(rail.out)))
    rail.write_toml('[workers.talk]\nscript = "talk.py"\ntopics = ["orders"]\nreplicas = 2\n',
                    topics="log_max_mb = 0.05\nlog_backups = 1\n[topics.orders]\npartitions = 3\n")
    rail.up()
    wait_for(lambda: rail.running("talk", 2), 20, what="2 talk replicas")
    followed = open(rail.folder / "followed.txt", "wb")
    log = rail.folder / "data" / "logs" / "talk.log"
    wait_for(lambda: "talk.0 | " in log.read_text(), 10, what="replica 0's first line")
    follower = subprocess.Popen([sys.executable, "-m", "runtime.cli", "logs", "talk", "-f",
                                 "--replica", "0", "-n", "1", "--control", rail.control],
                                stdout=followed, stderr=subprocess.STDOUT, env=python_env(),
                                cwd=ROOT)
    try:  # it follows from the end of the line it printed first
        wait_for(lambda: (rail.folder / "followed.txt").stat().st_size, 10,
                 what="the follower's first line")
        for round_ in range(4):  # ~100 KB a round against a 51 KB cap: rotated every round
            rail.send(range(round_ * 100, (round_ + 1) * 100))
            wait_for(lambda: rail.worker("talk")["processed"] == (round_ + 1) * 100, 20,
                     what=f"round {round_} handled")
        wait_for(lambda: (rail.folder / "data" / "logs" / "talk.log.1").exists(), 5,
                 what="a rotation")
        mine = {int(v) for m, v in (line.split() for line in rail.out.read_text().splitlines())
                if m == "talk-0"}
        assert mine, "replica 0 handled nothing"

        def printed() -> set[int]:
            text = (rail.folder / "followed.txt").read_text()
            return {int(line.split()[3]) for line in text.splitlines() if " value " in line}
        wait_for(lambda: printed() == mine, 10, what="every line of replica 0 followed")
        assert all(line.startswith("talk.0 | ")
                   for line in (rail.folder / "followed.txt").read_text().splitlines())
    finally:
        follower.kill()
        follower.wait(5)
        followed.close()
    last = rail.rail("logs", "talk", "--replica", "1", "-n", "3")
    assert last.returncode == 0 and len(last.stdout.splitlines()) == 3
    assert all(line.startswith("talk.1 | ") for line in last.stdout.splitlines())
    both = rail.rail("logs", "talk", "-n", "5").stdout.splitlines()
    assert len(both) == 5 and all(re.match(r"talk\.[01] \| ", line) for line in both)
    missing = rail.rail("logs", "nobody")
    assert missing.returncode == 1 and "no log" in missing.stderr and "talk" in missing.stderr


def worker_toml(name: str, replicas: int = 1, extra: str = "") -> str:
    return (f'[workers.{name}]\nscript = "{name}.py"\ntopics = ["orders"]\n'
            f"replicas = {replicas}\nbackoff_s = 0.05\n{extra}")


def test_rail_reload_applies_the_difference_and_leaves_the_rest_running(rail: Rail) -> None:
    for name in ("keep", "grow", "gone", "edit", "fresh", "late"):
        rail.script(f"{name}.py", APPENDER.format(out=str(rail.folder / f"{name}.txt")))
    rail.write_toml(worker_toml("keep") + worker_toml("grow") + worker_toml("gone")
                    + worker_toml("edit"))
    rail.up()
    assert rail.rail("register", "late", str(rail.folder / "late.py"), "--topics",
                     "orders").returncode == 0
    before = {name: wait_for(lambda: rail.running(name, 1), 20, what=f"{name} running")
              for name in ("keep", "grow", "gone", "edit", "late")}
    unchanged = rail.rail("reload")
    assert (unchanged.returncode, unchanged.stdout) == (0, "rail.toml unchanged: nothing to do\n")

    rail.script("edit.py", APPENDER.format(out=str(rail.folder / "edit.txt")) + "# edited\n")
    rail.write_toml(worker_toml("keep") + worker_toml("grow", replicas=2) + worker_toml("edit")
                    + worker_toml("fresh") + worker_toml("late"),
                    topics="[topics.orders]\npartitions = 3\n[topics.extra]\npartitions = 2\n")
    done = rail.rail("reload")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted([
        "created topic extra", "added fresh (1 replica)", "removed gone",
        "scaled grow to 2 replicas", "restarted edit (script's code changed)",
        "late: registered at run time: its rail.toml entry is ignored (rail unregister it "
        "first)"])
    wait_for(lambda: rail.running("grow", 2) and rail.running("fresh", 1)
             and (e := rail.running("edit", 1)) and e["pids"] != before["edit"]["pids"]
             and "gone" not in [w["name"] for w in rail.status()["workers"]], 20,
             what="the reload carried out")
    assert rail.worker("keep")["pids"] == before["keep"]["pids"]
    assert rail.worker("late")["pids"] == before["late"]["pids"]
    assert before["grow"]["pids"][0] in rail.worker("grow")["pids"]
    assert all_gone(before["gone"]["pids"])
    conn = Connection(rail.api)
    try:
        topics = {t.name: len(t.partitions) for t in conn.call(p.Metadata()).topics}
    finally:
        conn.close()
    assert topics["extra"] == 2

    rail.script("broken.py", "def handle(event, ctx)\n")
    rail.write_toml(worker_toml("keep") + worker_toml("broken"))
    refused = rail.rail("reload")
    assert refused.returncode == 1 and "does not compile" in refused.stderr
    assert "nothing reloaded" in refused.stderr
    assert rail.running("grow", 2) and rail.running("fresh", 1)


def test_reload_brings_back_a_changed_worker_that_was_unregistered_at_run_time(
        rail: Rail) -> None:
    rail.script("a.py", APPENDER.format(out=str(rail.out)))
    rail.write_toml(worker_toml("a"))
    rail.up()
    first = wait_for(lambda: rail.running("a", 1), 20, what="a running")
    assert rail.rail("unregister", "a").returncode == 0
    wait_for(lambda: not rail.status()["workers"] and all_gone(first["pids"]), 20,
             what="a stopped")
    assert rail.rail("reload").stdout == "rail.toml unchanged: nothing to do\n"
    assert rail.status()["workers"] == []
    rail.write_toml(worker_toml("a", replicas=2))
    done = rail.rail("reload")
    assert (done.returncode, done.stdout) == (0, "added a (2 replicas)\n"), done.stderr
    wait_for(lambda: rail.running("a", 2), 20, what="a back with 2 replicas")
