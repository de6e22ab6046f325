"""The worker host as the supervisor runs it: a real broker, real worker processes."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokerd import protocol as p
from brokerd.protocol import EXIT_CONFIG
from runtime.client import Producer
from runtime.connection import Connection
from runtime.dlq import read_all
from tests.helpers import ROOT, BrokerProcess, free_port, python_env, start_broker, wait_for

RECORDER = """
import json, os, time
OUT = os.environ["OUT"]
DELAY = float(os.environ.get("DELAY", "0"))
def setup(ctx):
    ctx.state["out"] = open(OUT, "a", buffering=1)
def handle(event, ctx):
    if DELAY:
        time.sleep(DELAY)
    ctx.state["out"].write(json.dumps([event.partition, event.offset, event.value]) + "\\n")
"""


class Workers:
    """Starts worker hosts and stops every one of them at the end of the test."""

    def __init__(self, broker: BrokerProcess, tmp: Path) -> None:
        self.broker = broker
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []

    def script(self, source: str, name: str = "script.py") -> Path:
        path = self.tmp / name
        path.write_text(textwrap.dedent(source))
        return path

    def start(self, script: Path, *extra: str, group: str = "g", topics: str = "orders",
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.worker", str(script), "--broker", self.broker.api,
             "--group", group, "--topics", topics, "--name", group, *extra],
            env={**python_env(), **(env or {})}, cwd=ROOT, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def workers(broker: BrokerProcess, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(broker, tmp_path)
    try:
        yield w
    finally:
        w.stop_all()


def produce(broker: BrokerProcess, count: int, topic: str = "orders", partitions: int = 3,
            start: int = 0) -> None:
    with Producer(broker.api) as producer:
        producer._call(p.CreateTopic(topic=topic, partitions=partitions, exist_ok=True))
        for i in range(start, start + count):
            producer.send(topic, {"n": i}, key=f"k{i % 17}")


def lines(path: Path) -> list[list]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("]")]


def describe(broker: BrokerProcess, group: str = "g") -> p.DescribeGroupReply:
    conn = Connection(broker.api)
    try:
        return conn.call(p.DescribeGroup(group=group))
    finally:
        conn.close()


def committed(broker: BrokerProcess, group: str = "g") -> dict[int, int]:
    return {gp.partition: gp.committed or 0 for gp in describe(broker, group).partitions}


def zero_lag(broker: BrokerProcess, group: str = "g") -> bool:
    parts = describe(broker, group).partitions
    return bool(parts) and all(gp.lag == 0 for gp in parts)


def test_events_reach_the_handler_in_partition_order_and_are_committed(workers: Workers,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    produce(workers.broker, 600)
    workers.start(workers.script(RECORDER), env={"OUT": str(out)})
    wait_for(lambda: len(lines(out)) >= 600, timeout=20, what="600 handled events")
    by_partition: dict[int, list[int]] = defaultdict(list)
    for partition, offset, _ in lines(out):
        by_partition[partition].append(offset)
    for offsets in by_partition.values():
        assert offsets == list(range(len(offsets)))
    assert sorted(v["n"] for _, _, v in lines(out)) == list(range(600))
    wait_for(lambda: zero_lag(workers.broker), timeout=10, what="lag 0")


def test_async_handlers_run_too(workers: Workers, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    produce(workers.broker, 50)
    script = workers.script("""
        import asyncio, json, os
        async def handle(event, ctx):
            await asyncio.sleep(0)
            with open(os.environ["OUT"], "a") as f:
                f.write(json.dumps([event.partition, event.offset, event.value]) + "\\n")
        """)
    workers.start(script, env={"OUT": str(out)})
    wait_for(lambda: len(lines(out)) >= 50, timeout=20, what="50 handled events")
    wait_for(lambda: zero_lag(workers.broker), timeout=10, what="lag 0")


def test_a_failing_event_goes_to_the_dlq_after_its_retries(workers: Workers) -> None:
    with Producer(workers.broker.api) as producer:
        producer._call(p.CreateTopic(topic="orders", partitions=1))
        producer.send("orders", b"bad", key="k1", headers={"trace": "t-1"})
        producer.send("orders", b"worse", key="k2")
    script = workers.script("""
        def handle(event, ctx):
            raise ValueError("no oven for " + repr(event.value))
        """)
    workers.start(script, "--retries", "2")
    conn = Connection(workers.broker.api)
    dead = wait_for(lambda: len(dlq := read_all(conn, "orders.dlq")) == 2 and dlq
                    if _exists(conn, "orders.dlq") else None, timeout=20, what="2 DLQ events")
    conn.close()
    first = dead[0]
    assert (first.key, first.value) == ("k1", b"bad")
    h = first.headers
    assert h["trace"] == "t-1"
    assert h["rail.error"].startswith("ValueError: no oven for b'bad'")
    assert "Traceback" in h["rail.traceback"]
    assert h["rail.attempts"] == "3"
    assert (h["rail.source.topic"], h["rail.source.partition"], h["rail.source.offset"]) == \
        ("orders", "0", "0")
    wait_for(lambda: zero_lag(workers.broker), timeout=10, what="lag 0 after dead-lettering")


def _exists(conn: Connection, topic: str) -> bool:
    return topic in {t.name for t in conn.call(p.Metadata()).topics}


def test_sigterm_finishes_commits_and_exits_zero(workers: Workers, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    produce(workers.broker, 2000)
    proc = workers.start(workers.script(RECORDER), env={"OUT": str(out), "DELAY": "0.002"})
    wait_for(lambda: len(lines(out)) >= 100, timeout=20, what="100 handled events")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    handled: dict[int, int] = defaultdict(int)
    for partition, _, _ in lines(out):
        handled[partition] += 1
    assert len(lines(out)) < 2000
    done = {part: n for part, n in committed(workers.broker).items() if n}
    assert done == dict(handled)


@pytest.mark.parametrize("source, problem", [
    (None, "not found"),
    ("def handle(event, ctx)\n    pass\n", "syntax error"),
    ("import no_such_module_anywhere\n", "failed to import"),
    ("def process(event, ctx):\n    pass\n", "no handle"),
])
def test_an_unusable_script_exits_78_with_one_line(workers: Workers, tmp_path: Path,
                                                   source: str | None, problem: str) -> None:
    script = tmp_path / "bad.py"
    if source is not None:
        script.write_text(source)
    proc = workers.start(script)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_CONFIG
    assert len(err.strip().splitlines()) == 1 and problem in err


def test_a_killed_worker_restarts_from_its_commits_and_loses_nothing(workers: Workers,
                                                                     tmp_path: Path) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    produce(workers.broker, 3000)
    script = workers.script(RECORDER)
    proc = workers.start(script, "--member-id", "g-0",
                         env={"OUT": str(first), "DELAY": "0.001"})
    wait_for(lambda: len(lines(first)) >= 500, timeout=20, what="500 handled events")
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    at_kill = committed(workers.broker)
    workers.start(script, "--member-id", "g-0", env={"OUT": str(second)})
    wait_for(lambda: zero_lag(workers.broker), timeout=30, what="lag 0 after the restart")
    wait_for(lambda: len({(a, b) for a, b, _ in lines(first) + lines(second)}) == 3000,
             timeout=10, what="every event handled")
    runs = [defaultdict(set), defaultdict(set)]
    for run, path in zip(runs, (first, second)):
        for partition, offset, _ in lines(path):
            run[partition].add(offset)
    for part in range(3):
        # the restart resumes exactly at the committed offset: nothing skipped, and only
        # events handled but not yet committed are handled again
        assert min(runs[1][part]) == at_kill.get(part, 0)
        assert runs[0][part] & runs[1][part] == {o for o in runs[0][part] if o >= at_kill.get(part, 0)}


def test_the_jsonl_sink_appends_every_event(workers: Workers, tmp_path: Path) -> None:
    out = tmp_path / "sink" / "orders.jsonl"
    produce(workers.broker, 40)
    workers.start(ROOT / "workers" / "jsonl_sink.py", env={"RAIL_SINK_PATH": str(out)})
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 40, timeout=20,
             what="40 lines in the sink")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["value"]["n"] for r in rows) == list(range(40))


def test_a_standalone_script_runs_with_run(workers: Workers, tmp_path: Path) -> None:
    produce(workers.broker, 5)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "workers" / "printer.py"), "--topics", "orders"],
        env={**python_env(), "RAIL_BROKER": workers.broker.api}, cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    workers.procs.append(proc)
    assert proc.stdout is not None
    seen = [proc.stdout.readline() for _ in range(5)]
    assert all(line.startswith("orders[") for line in seen)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    wait_for(lambda: zero_lag(workers.broker, "printer"), timeout=10, what="printer lag 0")


def test_health_reports_progress_and_a_busy_handler(workers: Workers, tmp_path: Path) -> None:
    import msgspec
    import zmq
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    try:
        produce(workers.broker, 3, partitions=1)
        script = workers.script("""
            import time
            def handle(event, ctx):
                if event.offset == 2:
                    time.sleep(4)
            """)
        workers.start(script, "--health", f"tcp://127.0.0.1:{port}", "--member-id", "g-0")
        reports = []

        def busy() -> bool:
            if pull.poll(200):
                reports.append(msgspec.msgpack.decode(pull.recv()))
            return bool(reports) and reports[-1]["busy_ms"] >= 1500
        wait_for(busy, timeout=10, what="a health report with busy_ms >= 1500")
        last = reports[-1]
        assert (last["name"], last["member_id"], last["state"]) == ("g", "g-0", "running")
        assert last["processed"] == 2 and last["failed"] == 0 and last["pid"] > 0
    finally:
        pull.close()


def test_a_worker_whose_parent_dies_stops(workers: Workers, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    produce(workers.broker, 10)
    shell = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -m runtime.worker "{workers.script(RECORDER)}" '
         f'--broker {workers.broker.api} --group g --topics orders --name g '
         '>/dev/null 2>&1 & echo $!; sleep 3'],
        env={**python_env(), "OUT": str(out)}, cwd=ROOT, text=True, capture_output=True,
        timeout=20)
    pid = int(shell.stdout.split()[0])
    import os

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    try:
        wait_for(gone, timeout=10, what="the orphaned worker to exit")
    finally:
        if not gone():
            os.kill(pid, signal.SIGKILL)
    assert len(lines(out)) == 10


@contextlib.contextmanager
def recorder_on_fixed_ports(tmp_path: Path, *extra: str) -> Iterator[
        tuple[Workers, subprocess.Popen[str], Path]]:
    """A broker on ports of its own (``restart_broker`` keeps them) and a RECORDER worker
    host that has handled 5 events into the file given back; the worker and the broker of
    the moment are stopped at the end."""
    out = tmp_path / "out.jsonl"
    workers = Workers(start_broker(tmp_path / "data", api_port=free_port(),
                                   ingest_port=free_port()), tmp_path)
    try:
        produce(workers.broker, 5)
        proc = workers.start(workers.script(RECORDER), *extra, env={"OUT": str(out)})
        wait_for(lambda: len(lines(out)) == 5, 20, what="5 events handled")
        yield workers, proc, out
    finally:
        workers.stop_all()
        workers.broker.stop()


def restart_broker(workers: Workers) -> BrokerProcess:
    """Start the workers' broker again (after its kill) on its ports and data."""
    old = workers.broker
    workers.broker = start_broker(old.data_dir, api_port=int(old.api.rsplit(":", 1)[1]),
                                  ingest_port=int(old.ingest.rsplit(":", 1)[1]))
    return workers.broker


def test_a_worker_goes_on_at_once_when_its_broker_is_restarted(tmp_path: Path) -> None:
    """The broker killed (kill -9) and started again at once, three times, as a supervisor
    does: each time the worker handles the next events within 1.5 s.  Its parked poll went
    down with the connection and used to be waited for to the end of its 5 s wait (3.3 to
    4.0 s after the restart); the lost connection now sends it again at once."""
    with recorder_on_fixed_ports(tmp_path) as (workers, proc, out):
        for restart in range(1, 4):
            time.sleep(0.7 * restart)  # each kill at another point of the poll's wait
            workers.broker.kill9()
            killed = time.monotonic()
            produce(restart_broker(workers), 5, start=5 * restart)
            wait_for(lambda: {line[2]["n"] for line in lines(out)} >= set(range(5 * restart + 5)),
                     30, what="the events sent after the restart handled")
            took = time.monotonic() - killed
            assert took < 1.5, f"the worker went on {took:.1f} s after restart {restart}"
        assert proc.poll() is None


def test_a_worker_waits_out_a_broker_outage_and_goes_on_with_the_same_process(
        tmp_path: Path) -> None:
    with recorder_on_fixed_ports(tmp_path, "--session-timeout-ms", "2000") as (
            workers, proc, out):
        workers.broker.kill9()
        # Longer than its poll's wait plus its request timeout, noticed at the end of a 5 s
        # poll (about 15 s): the worker used to exit there, and a supervisor counts each
        # such exit as a crash.
        down_until = time.monotonic() + 17
        while time.monotonic() < down_until:
            assert proc.poll() is None, "the worker exited while the broker was down"
            time.sleep(0.25)
        produce(restart_broker(workers), 5, start=5)
        wait_for(lambda: {line[2]["n"] for line in lines(out)} == set(range(10)), 30,
                 what="the 5 events sent after the outage handled")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stderr is not None and "waiting for it" in proc.stderr.read()
