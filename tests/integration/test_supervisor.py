"""``rail up`` with real processes: brokerd and worker replicas on free ports, temp dirs."""

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
import psutil
import pytest

from runtime.client import Producer
from tests.helpers import ROOT, free_port, python_env, wait_for

APPENDER = """
def handle(event, ctx):
    with open({out!r}, "a") as f:
        f.write(f"{{event.value}}\\n")
"""


class Rail:
    """A ``rail up`` process plus the endpoints of its rail.toml; stopped by pid."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.api = f"tcp://127.0.0.1:{free_port()}"
        self.ingest = f"tcp://127.0.0.1:{free_port()}"
        self.control = f"tcp://127.0.0.1:{free_port()}"
        self.out = folder / "out.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def write_toml(self, workers: str, topics: str = "[topics.orders]\npartitions = 3\n") -> None:
        (self.folder / "rail.toml").write_text(
            f'[broker]\ndata_dir = "data"\nbind = "{self.api}"\ningest = "{self.ingest}"\n'
            f'[supervisor]\ncontrol = "{self.control}"\ngrace_s = 5\n{topics}{workers}')

    def script(self, name: str, body: str) -> Path:
        path = self.folder / name
        path.write_text(body)
        return path

    def up(self) -> None:
        self.runs += 1
        stdout = open(self.folder / f"up-{self.runs}.out", "wb")
        stderr = open(self.folder / f"up-{self.runs}.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "up", "-c", str(self.folder / "rail.toml")],
            stdout=stdout, stderr=stderr, env=python_env(), cwd=ROOT)
        wait_for(self.answers, 30, what="rail up to answer status")

    def answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"rail up exited with {self.proc.returncode}:\n{self.log()}")
        return self.rail("status").returncode == 0

    def rail(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runtime.cli", *args, "--control",
                               self.control], capture_output=True, text=True,
                              env=python_env(), cwd=ROOT, timeout=60)

    def status(self) -> dict[str, Any]:
        done = self.rail("status", "--json")
        assert done.returncode == 0, done.stderr
        return msgspec.json.decode(done.stdout)

    def worker(self, name: str) -> dict[str, Any]:
        return next(w for w in self.status()["workers"] if w["name"] == name)

    def running(self, name: str, replicas: int) -> dict[str, Any] | None:
        w = self.worker(name)
        return w if w["state"] == "running" and len(w["pids"]) == replicas else None

    def send(self, values: range) -> None:
        with Producer(self.api) as producer:
            for v in values:
                producer.send("orders", v, key=str(v))
            producer.flush()

    def seen(self) -> list[int]:
        return [int(x) for x in self.out.read_text().split()] if self.out.exists() else []

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log(self) -> str:
        return (self.folder / f"up-{self.runs}.err").read_text()


@pytest.fixture
def rail(tmp_path: Path) -> Iterator[Rail]:
    r = Rail(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def appender_toml(rail: Rail, name: str = "pizza", replicas: int = 2, extra: str = "") -> str:
    rail.script(f"{name}.py", APPENDER.format(out=str(rail.out)))
    return (f'[workers.{name}]\nscript = "{name}.py"\ntopics = ["orders"]\n'
            f"replicas = {replicas}\nbackoff_s = 0.05\n{extra}")


def all_gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in pids)


def test_rail_up_starts_the_broker_and_every_replica_and_status_lists_them(rail: Rail) -> None:
    rail.write_toml(appender_toml(rail))
    rail.up()
    pizza = wait_for(lambda: rail.running("pizza", 2), 20, what="2 pizza replicas")
    rail.send(range(50))
    wait_for(lambda: sorted(rail.seen()) == list(range(50)), 20, what="50 events handled")
    status = rail.status()
    assert status["broker"]["state"] == "running" and status["broker"]["pid"]
    for index, pid in enumerate(pizza["pids"]):
        assert re.search(rf"^\d{{4}}-\d\d-\d\d [\d:,]+ rail INFO started pizza\.\d pid {pid}$",
                         rail.log(), re.M), rail.log()
    table = rail.rail("status").stdout
    assert "pizza" in table and "running" in table and "LAG" in table
    assert rail.stop() == 0
    assert all_gone(pizza["pids"] + [status["broker"]["pid"]])


def test_a_hangup_stops_rail_up_gracefully(rail: Rail) -> None:
    """SIGHUP (the terminal that ran ``rail up`` closed) is a graceful stop, as SIGTERM:
    its default action ended the supervisor at once and took its children along with
    SIGKILL (their parent-death signal), without a word in the log."""
    rail.write_toml(appender_toml(rail))
    rail.up()
    pizza = wait_for(lambda: rail.running("pizza", 2), 20, what="2 pizza replicas")
    broker = rail.status()["broker"]["pid"]
    assert rail.proc is not None
    rail.proc.send_signal(signal.SIGHUP)
    assert rail.proc.wait(30) == 0
    assert "SIGHUP: stopping gracefully" in rail.log(), rail.log()
    assert all_gone(pizza["pids"] + [broker])


def test_a_killed_replica_is_restarted_and_no_event_is_lost(rail: Rail) -> None:
    rail.write_toml(appender_toml(rail))
    rail.up()
    pizza = wait_for(lambda: rail.running("pizza", 2), 20, what="2 pizza replicas")
    rail.send(range(0, 200))
    os.kill(pizza["pids"][0], signal.SIGKILL)
    rail.send(range(200, 400))
    again = wait_for(lambda: (w := rail.running("pizza", 2)) and w["restarts"] == 1 and w,
                     10, what="the killed replica restarted")
    assert pizza["pids"][0] not in again["pids"] and pizza["pids"][1] in again["pids"]
    wait_for(lambda: set(rail.seen()) == set(range(400)), 30, what="every event handled")


def test_a_worker_crashing_on_start_fails_after_the_intensity_limit_and_others_keep_working(
        rail: Rail) -> None:
    rail.script("crash.py", "def setup(ctx):\n    raise RuntimeError('boom')\n\n"
                            "def handle(event, ctx):\n    pass\n")
    rail.write_toml(appender_toml(rail, replicas=1) + '[workers.crash]\nscript = "crash.py"\n'
                    'topics = ["orders"]\nmax_restarts = 2\nwithin_s = 60\nbackoff_s = 0.05\n')
    rail.up()
    crash = wait_for(lambda: (w := rail.worker("crash"))["state"] == "failed" and w, 30,
                     what="crash marked failed")
    assert crash["restarts"] == 2 and crash["pids"] == []
    assert "more than 2 restarts" in crash["error"]
    wait_for(lambda: rail.running("pizza", 1), 10, what="pizza still running")
    rail.send(range(20))
    wait_for(lambda: sorted(rail.seen()) == list(range(20)), 20, what="pizza keeps working")


def test_a_script_without_handle_is_marked_failed_without_restarts(rail: Rail) -> None:
    rail.script("nohandle.py", "def hand(event, ctx):\n    pass\n")
    rail.write_toml(appender_toml(rail, replicas=1) + '[workers.nohandle]\n'
                    'script = "nohandle.py"\ntopics = ["orders"]\n')
    rail.up()
    broken = wait_for(lambda: (w := rail.worker("nohandle"))["state"] == "failed" and w, 20,
                      what="nohandle marked failed")
    assert broken["restarts"] == 0 and "exit code 78" in broken["error"]
    assert rail.running("pizza", 1)


def test_a_killed_supervisor_leaves_no_orphans_and_up_resumes_from_committed_offsets(
        rail: Rail) -> None:
    rail.write_toml(appender_toml(rail))
    rail.up()
    wait_for(lambda: rail.running("pizza", 2), 20, what="2 pizza replicas")
    rail.send(range(100))
    wait_for(lambda: rail.worker("pizza")["lag"] == 0 and len(rail.seen()) >= 100, 20,
             what="100 events handled and committed")
    status = rail.status()
    children = rail.worker("pizza")["pids"] + [status["broker"]["pid"]]
    assert rail.proc is not None
    rail.proc.kill()
    rail.proc.wait(5)
    wait_for(lambda: all_gone(children), 5, what="no orphan left")
    rail.up()
    wait_for(lambda: rail.running("pizza", 2), 20, what="2 pizza replicas again")
    rail.send(range(100, 150))
    wait_for(lambda: set(rail.seen()) == set(range(150)), 20, what="new events handled")
    assert sorted(rail.seen()) == list(range(150)), "committed events were handled again"


def test_a_run_time_registration_survives_rail_down_and_up(rail: Rail) -> None:
    rail.write_toml("")
    rail.up()
    script = rail.script("late.py", APPENDER.format(out=str(rail.out)))
    done = rail.rail("register", "late", str(script), "--topics", "orders", "--replicas", "2")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: rail.running("late", 2), 20, what="late registered and running")
    assert rail.rail("down").returncode == 0
    assert rail.proc is not None and rail.proc.wait(30) == 0
    rail.up()
    wait_for(lambda: rail.running("late", 2), 20, what="late back after rail up")
    rail.send(range(10))
    # At-least-once: if the second replica joins after the first took an event but before
    # its commit, that event is handled again.  Every one must be handled.
    wait_for(lambda: set(rail.seen()) == set(range(10)), 20, what="late handles events")


def test_rail_scale_changes_the_replica_count(rail: Rail) -> None:
    rail.write_toml(appender_toml(rail, replicas=1))
    rail.up()
    wait_for(lambda: rail.running("pizza", 1), 20, what="1 replica")
    assert rail.rail("scale", "pizza", "3").returncode == 0
    three = wait_for(lambda: rail.running("pizza", 3), 20, what="3 replicas")
    assert rail.rail("scale", "pizza", "1").returncode == 0
    one = wait_for(lambda: rail.running("pizza", 1), 20, what="back to 1 replica")
    assert one["pids"][0] in three["pids"]
    wait_for(lambda: all_gone([p for p in three["pids"] if p not in one["pids"]]), 10,
             what="the retired replicas gone")


def test_bad_register_input_gets_one_clear_line_and_a_non_zero_exit(rail: Rail) -> None:
    rail.write_toml(appender_toml(rail, replicas=1))
    rail.up()
    nohandle = rail.script("nohandle.py", "x = 1\n")
    broken = rail.script("broken.py", "def handle(event, ctx)\n")
    cases = {
        ("register", "a", str(rail.folder / "missing.py"), "--topics", "orders"): "no such file",
        ("register", "b", str(nohandle), "--topics", "orders"): "defines no handle",
        ("register", "c", str(broken), "--topics", "orders"): "does not compile",
        ("register", "pizza", str(nohandle), "--topics", "orders"): "already registered",
        ("scale", "nobody", "2"): "no worker named 'nobody'",
        ("register", "d", str(rail.folder / "pizza.py"), "--topics", "orders",
         "--replicas", "-1"): "replicas: expected int >= 0",
    }
    for args, expected in cases.items():
        done = rail.rail(*args)
        assert done.returncode != 0, args
        assert expected in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert [w["name"] for w in rail.status()["workers"]] == ["pizza"]
    assert rail.running("pizza", 1)


def test_rail_without_a_supervisor_says_how_to_start_one(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "status", "--control",
                           f"tcp://127.0.0.1:{free_port()}"], capture_output=True, text=True,
                          env=python_env(), cwd=ROOT, timeout=30)
    assert done.returncode == 1
    assert "no supervisor at" in done.stderr and "rail up" in done.stderr


def test_a_hung_handler_is_killed_and_restarted(rail: Rail) -> None:
    rail.script("stuck.py", "import time\n\ndef handle(event, ctx):\n    time.sleep(600)\n")
    rail.write_toml('[workers.stuck]\nscript = "stuck.py"\ntopics = ["orders"]\n'
                    "handler_timeout_s = 1\nbackoff_s = 0.05\n")
    rail.up()
    first = wait_for(lambda: rail.running("stuck", 1), 20, what="stuck running")
    rail.send(range(1))
    again = wait_for(lambda: (w := rail.worker("stuck"))["restarts"] >= 1 and w, 20,
                     what="the hung replica restarted")
    assert first["pids"][0] not in again["pids"]
    assert "is hung" in rail.log() and "handle() busy" in rail.log()


def test_a_worker_past_max_rss_is_recycled_gracefully(rail: Rail) -> None:
    rail.script("fat.py", "blob = b'x' * (80 * 2**20)\n\ndef handle(event, ctx):\n    pass\n")
    rail.write_toml('[workers.fat]\nscript = "fat.py"\ntopics = ["orders"]\nmax_rss_mb = 60\n')
    rail.up()
    first = wait_for(lambda: rail.running("fat", 1), 20, what="fat running")
    wait_for(lambda: rail.worker("fat")["recycles"] >= 1, 20, what="fat recycled")
    assert "max_rss_mb=60: recycling" in rail.log()
    wait_for(lambda: f"pid {first['pids'][0]} exited with code 0" in rail.log(), 10,
             what="the first process stopped cleanly")
    assert rail.worker("fat")["restarts"] == 0


def test_the_broker_is_restarted_when_it_dies(rail: Rail) -> None:
    rail.write_toml(appender_toml(rail, replicas=1))
    rail.up()
    wait_for(lambda: rail.running("pizza", 1), 20, what="pizza running")
    broker = rail.status()["broker"]["pid"]
    os.kill(broker, signal.SIGKILL)
    wait_for(lambda: (b := rail.status()["broker"])["pid"] not in (None, broker)
             and b["restarts"] == 1, 20, what="brokerd restarted")
    rail.send(range(10))
    wait_for(lambda: set(rail.seen()) == set(range(10)), 30, what="events flow again")


def test_a_broker_that_failed_comes_back_with_rail_restart_brokerd(rail: Rail) -> None:
    rail.write_toml(appender_toml(rail, replicas=1))
    rail.up()
    wait_for(lambda: rail.running("pizza", 1), 20, what="pizza running")
    port = int(rail.api.rsplit(":", 1)[1])
    broker = rail.status()["broker"]["pid"]
    os.kill(broker, signal.SIGKILL)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        # Take the broker's port before its restart (0.2 s backoff): the new brokerd cannot
        # bind, exits with its bind error code, and is marked failed, not retried.
        wait_for(lambda: _try_bind(squatter, port), 5, what="the broker's port to free up")
        squatter.listen()
        wait_for(lambda: rail.status()["broker"]["state"] == "failed", 20, what="broker failed")
    finally:
        squatter.close()
    assert "Address already in use" in rail.status()["broker"]["error"]
    assert "Address already in use" in rail.rail("status").stdout
    assert rail.rail("restart", "brokerd").returncode == 0
    wait_for(lambda: rail.status()["broker"]["state"] == "running", 20, what="broker back")
    rail.send(range(10))
    wait_for(lambda: set(rail.seen()) == set(range(10)), 30, what="events flow again")


def test_rail_restart_brokerd_restarts_a_running_broker_and_no_worker_is_named_so(
        rail: Rail) -> None:
    rail.write_toml(appender_toml(rail, replicas=1))
    rail.up()
    wait_for(lambda: rail.running("pizza", 1), 20, what="pizza running")
    before = rail.status()["broker"]
    assert rail.rail("restart", "brokerd").returncode == 0
    wait_for(lambda: (b := rail.status()["broker"])["pid"] not in (None, before["pid"])
             and b["state"] == "running", 20, what="a new brokerd")
    assert rail.status()["broker"]["restarts"] == before["restarts"] + 1
    assert not psutil.pid_exists(before["pid"])
    rail.send(range(10))
    wait_for(lambda: set(rail.seen()) == set(range(10)), 30, what="events flow again")
    script = rail.script("b.py", APPENDER.format(out=str(rail.out)))
    refused = rail.rail("register", "brokerd", str(script), "--topics", "orders")
    assert refused.returncode != 0 and "the broker's name" in refused.stderr


def test_a_chatty_worker_log_is_rotated_at_its_cap(rail: Rail) -> None:
    rail.script("chatty.py", "def handle(event, ctx):\n    print('x' * 1000, event.value)\n")
    rail.write_toml('[workers.chatty]\nscript = "chatty.py"\ntopics = ["orders"]\n',
                    topics="log_max_mb = 0.05\nlog_backups = 2\n"  # still [supervisor]
                    "[topics.orders]\npartitions = 3\n")
    rail.up()
    wait_for(lambda: rail.running("chatty", 1), 20, what="chatty running")
    logs = rail.folder / "data" / "logs"
    for round_ in range(3):  # ~100 KB of output a round against a 51 KB cap
        rail.send(range(round_ * 100, (round_ + 1) * 100))
        wait_for(lambda: rail.worker("chatty")["processed"] == (round_ + 1) * 100, 20,
                 what=f"round {round_} handled")
        # the supervisor looks at the sizes once a second
        wait_for(lambda: (logs / "chatty.log").stat().st_size < 50 * 1024, 5,
                 what=f"the log of round {round_} rotated")
    assert (logs / "chatty.log.1").stat().st_size > 90 * 1024
    assert (logs / "chatty.log.2").stat().st_size > 90 * 1024
    assert not (logs / "chatty.log.3").exists()  # log_backups = 2


def _try_bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def test_a_failed_worker_comes_back_with_rail_restart_once_its_script_is_fixed(
        rail: Rail) -> None:
    script = rail.script("pizza.py", "def hand(event, ctx):\n    pass\n")
    rail.write_toml('[workers.pizza]\nscript = "pizza.py"\ntopics = ["orders"]\n')
    rail.up()
    wait_for(lambda: rail.worker("pizza")["state"] == "failed", 20, what="pizza failed")
    script.write_text(APPENDER.format(out=str(rail.out)))
    assert rail.rail("restart", "pizza").returncode == 0
    wait_for(lambda: rail.running("pizza", 1), 20, what="pizza running again")
    rail.send(range(5))
    wait_for(lambda: sorted(rail.seen()) == list(range(5)), 20, what="pizza handles events")


def test_unregister_stops_a_worker_and_forgets_it_across_rail_up(rail: Rail) -> None:
    rail.write_toml("")
    rail.up()
    script = rail.script("late.py", APPENDER.format(out=str(rail.out)))
    assert rail.rail("register", "late", str(script), "--topics", "orders").returncode == 0
    late = wait_for(lambda: rail.running("late", 1), 20, what="late running")
    assert rail.rail("unregister", "late").returncode == 0
    wait_for(lambda: not rail.status()["workers"], 20, what="late gone from status")
    assert all_gone(late["pids"])
    assert rail.stop() == 0
    rail.up()
    assert rail.status()["workers"] == []


def test_supervisor_metrics_show_workers_their_restarts_and_what_they_handled(
        rail: Rail) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from tests.helpers import free_port
    port = free_port()
    rail.write_toml(appender_toml(rail), topics=f'metrics = "127.0.0.1:{port}"\n'
                    "[topics.orders]\npartitions = 3\n")
    rail.up()
    pizza = wait_for(lambda: rail.running("pizza", 2), 20, what="2 pizza replicas")
    rail.send(range(50))
    wait_for(lambda: sorted(rail.seen()) == list(range(50)), 20, what="50 events handled")
    os.kill(pizza["pids"][0], signal.SIGKILL)
    wait_for(lambda: (w := rail.running("pizza", 2)) and w["restarts"] == 1, 10,
             what="the killed replica restarted")

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}
    worker = (("worker", "pizza"),)
    m = wait_for(lambda: (m := scrape()) and m.get(("rail_worker_processed_total", worker),
                                                   0) >= 50 and m, 20, what="50 processed")
    assert m[("rail_worker_processes", worker)] == 2
    assert m[("rail_worker_replicas", worker)] == 2
    assert m[("rail_worker_restarts_total", worker)] == 1
    assert m[("rail_worker_state", (("state", "running"), ("worker", "pizza")))] == 1
    assert m[("rail_worker_state", (("state", "failed"), ("worker", "pizza")))] == 0
    assert m[("rail_supervisor_broker_up", ())] == 1
    assert rail.stop() == 0
