"""``rail up --zookeeper HOSTS --broker-id N``: the supervisor's own broker joins a cluster.

Two supervisors (broker ids 0 and 1, one configured by rail.toml's [broker] keys, the other
by flags) and one plain broker (id 2) form a cluster; rail.toml's topics are created with
replication; the workers of both supervisors share one group and consume from the leaders.
An unreachable ZooKeeper and a taken id are clear errors with brokerd's exit codes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from brokerd import protocol as p
from runtime.client import Producer
from runtime.routing import Router
from runtime.worker.delays import DELAY_TOPIC
from tests.cluster.client import metadata, start_member
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import (
    ROOT,
    free_port,
    python_env,
    stop_process,
    wait_for,
    written_lines,
)

EVENTS = 400


def rail(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT,
                          env=python_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def supervisor_folder(folder: Path, out: Path, broker_keys: str = "") -> tuple[Path, str, str]:
    """A rail.toml with its own ports and a worker ``cook`` appending each value to ``out``;
    the toml's path, its control endpoint and its broker's endpoint."""
    folder.mkdir(parents=True)
    control = f"tcp://127.0.0.1:{free_port()}"
    api = f"tcp://127.0.0.1:{free_port()}"
    (folder / "cook.py").write_text(
        f"def handle(event, ctx):\n    with open({str(out)!r}, 'a') as f:\n"
        "        f.write(f'{event.value}\\n')\n")
    (folder / "rail.toml").write_text(
        f'[broker]\nbind = "{api}"\ningest = "tcp://127.0.0.1:{free_port()}"\n{broker_keys}'
        f'[supervisor]\ncontrol = "{control}"\ngrace_s = 5\n'
        '[topics.orders]\npartitions = 4\n'
        '[workers.cook]\nscript = "cook.py"\ntopics = ["orders"]\n')
    return folder / "rail.toml", control, api


def start_up(toml: Path, *flags: str) -> subprocess.Popen[bytes]:
    with open(toml.parent / "up.err", "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "runtime.cli", "up", "-c", str(toml),
                                 *flags], stdout=subprocess.DEVNULL, stderr=err,
                                env=python_env(), cwd=toml.parent)


def status(control: str) -> dict[str, Any] | None:
    run = rail("status", "--json", "--control", control)
    return json.loads(run.stdout) if run.returncode == 0 else None


def cook_running(control: str) -> bool:
    s = status(control)
    return bool(s and s["broker"]["state"] == "running" and s["workers"][0]["state"] == "running")


def send_and_check_each_handled_once(every: str, outs: list[Path]) -> None:
    """EVENTS keyed orders, acks=all; each handled once, by the cooks of both supervisors."""
    with Producer(every, acks="all") as producer:
        for i in range(EVENTS):
            producer.send("orders", i, key=str(i))
    wait_for(lambda: sum(len(written_lines(o)) for o in outs) >= EVENTS, 60, 0.2,
             f"{EVENTS} events handled")
    by_cook = [[int(v) for v in written_lines(o)] for o in outs]
    assert all(by_cook), "a cook on each supervisor handled events"
    assert sorted(by_cook[0] + by_cook[1]) == list(range(EVENTS))


def test_two_supervisors_and_a_broker_form_a_cluster_whose_workers_share_the_events(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    plain = start_member(tmp_path, zookeeper, 2)
    ups: list[subprocess.Popen[bytes]] = []
    outs = [tmp_path / "out0.txt", tmp_path / "out1.txt"]
    try:
        toml0, control0, api0 = supervisor_folder(
            tmp_path / "s0", outs[0], f'zookeeper = "{zookeeper.hosts}"\nbroker_id = 0\n')
        ups.append(start_up(toml0))
        wait_for(lambda: cook_running(control0), 60, 0.2, "supervisor 0 and its cook running")
        toml1, control1, api1 = supervisor_folder(tmp_path / "s1", outs[1])
        advertised = api1.replace("127.0.0.1", "localhost")  # what clients are told
        ups.append(start_up(toml1, "--zookeeper", zookeeper.hosts, "--broker-id", "1",
                            "--advertise", advertised))
        wait_for(lambda: cook_running(control1), 60, 0.2, "supervisor 1 and its cook running")

        every = f"{api0},{api1},{plain.api}"
        meta = wait_for(lambda: (m := metadata(api1, "orders")) and len(m["brokers"]) == 3
                        and m, 30, 0.2, "broker 1 to see three brokers")
        assert sorted(b["id"] for b in meta["brokers"]) == [0, 1, 2]
        assert {b["id"]: b["api"] for b in meta["brokers"]}[1] == advertised
        # created by supervisor 0 while brokers 0 and 2 were live: min(3, live) replicas
        parts = meta["topics"][0]["partitions"]
        assert len(parts) == 4
        assert all(sorted(x["replicas"]) == [0, 2] for x in parts), parts
        wait_for(lambda: all(sorted(x["isr"]) == [0, 2] for x in
                             metadata(api1, "orders")["topics"][0]["partitions"]),  # type: ignore[index]
                 30, 0.2, "every replica of orders in sync")

        router = Router(every, timeout_s=5.0)
        try:
            def settled() -> bool:  # both members own partitions: no rebalance to come
                members = router.call(p.DescribeGroup(group="cook")).members
                return sorted(m.member_id for m in members) == ["cook-0.b0", "cook-0.b1"] \
                    and all(m.assignment for m in members)
            wait_for(settled, 60, 0.2, "both cooks in group cook, each with partitions")
        finally:
            router.close()
        send_and_check_each_handled_once(every, outs)
        # each supervisor reads the group at its coordinator (maybe another broker)
        wait_for(lambda: (s := status(control1)) and s["workers"][0]["processed"] == EVENTS,
                 30, 0.2, f"rail status to count {EVENTS} committed")
    finally:
        for up in ups:
            stop_process(up, 30)
        plain.stop()
    assert [up.returncode for up in ups] == [0, 0]


def test_the_supervisors_broker_killed_with_kill_9_is_restarted_and_rejoins_the_cluster(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """Its workers go on through the cluster's other brokers while it is away; back, it
    waits out its old registration, registers again and catches up."""
    plain = [start_member(tmp_path, zookeeper, i) for i in (1, 2)]
    up: subprocess.Popen[bytes] | None = None
    out = tmp_path / "out.txt"
    try:
        toml, control, api = supervisor_folder(tmp_path / "s0", out)
        up = start_up(toml, "--zookeeper", zookeeper.hosts, "--broker-id", "0")
        wait_for(lambda: cook_running(control), 60, 0.2, "the supervisor and its cook running")
        meta = metadata(plain[0].api, "orders")
        assert meta is not None
        assert all(sorted(x["replicas"]) == [0, 1, 2] for x in meta["topics"][0]["partitions"])
        every = ",".join([api, *(b.api for b in plain)])
        broker_pid = status(control)["broker"]["pid"]  # type: ignore[index]
        with Producer(every, acks="all") as producer:
            for i in range(EVENTS):
                if i == EVENTS // 4:
                    kill9_pid(broker_pid)
                producer.send("orders", i, key=str(i))
        wait_for(lambda: set(map(int, written_lines(out))) >= set(range(EVENTS)), 90, 0.2,
                 f"all {EVENTS} events handled through the kill")

        def back() -> bool:
            s = status(control)
            return bool(s and s["broker"]["state"] == "running" and s["broker"]["restarts"] == 1
                        and s["broker"]["pid"] != broker_pid)
        wait_for(back, 30, 0.2, "the supervisor to restart its broker")
        wait_for(lambda: all(sorted(x["isr"]) == [0, 1, 2] for x in
                             metadata(plain[0].api, "orders")["topics"][0]["partitions"]),  # type: ignore[index]
                 60, 0.2, "broker 0 back in every ISR of orders")
    finally:
        if up is not None:
            stop_process(up, 30)
        for b in plain:
            b.stop()
    assert up.returncode == 0


def kill9_pid(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def test_an_unreachable_zookeeper_and_a_taken_id_are_clear_errors(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    plain = start_member(tmp_path, zookeeper, 2)
    try:
        cases = [(["--zookeeper", f"127.0.0.1:{free_port()}", "--broker-id", "0"], 69,
                  "cannot be reached"),
                 (["--zookeeper", zookeeper.hosts, "--broker-id", "2"], 78,
                  "broker id 2 is taken")]
        runs = []
        for index, (flags, _, _) in enumerate(cases):  # at once: each waits ~10 s
            toml, _, _ = supervisor_folder(tmp_path / f"s{index}", tmp_path / "out.txt")
            runs.append(subprocess.Popen(
                [sys.executable, "-m", "runtime.cli", "up", "-c", str(toml), *flags],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                env=python_env(), cwd=ROOT))
        for run, (flags, code, words) in zip(runs, cases):
            try:
                _, err = run.communicate(timeout=40)
            finally:
                stop_process(run)
            assert run.returncode == code, (flags, err)
            assert words in err, err
        for flags, words in (
                (["--zookeeper", zookeeper.hosts], "needs broker.broker_id"),
                (["--zookeeper", zookeeper.hosts, "--broker-id", "0", "--broker", plain.api],
                 "give one of them"),
                (["--broker-id", "0"], "set broker.zookeeper")):
            done = rail("up", "-c", str(toml), *flags)
            assert done.returncode == 78, (flags, done.stderr)
            assert words in done.stderr, done.stderr
        assert plain.proc.poll() is None, "the broker holding id 2 keeps serving"
    finally:
        plain.stop()


def test_workers_only_supervisors_on_a_broker_list_are_distinct_members(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """``rail up --broker a,b`` on two hosts (here: one named by --node, one by default by
    the host's name): two members of group cook, not one member id claimed twice (which
    would hand both the same partitions); each event handled once."""
    brokers = [start_member(tmp_path, zookeeper, i) for i in range(2)]
    every = ",".join(b.api for b in brokers)
    ups: list[subprocess.Popen[bytes]] = []
    outs = [tmp_path / "out0.txt", tmp_path / "out1.txt"]
    try:
        controls = []
        for i, flags in enumerate((["--node", "host-a"], [])):
            toml, control, _ = supervisor_folder(tmp_path / f"s{i}", outs[i])
            controls.append(control)
            ups.append(start_up(toml, "--broker", every, *flags))
        for control in controls:
            wait_for(lambda c=control: cook_running(c), 60, 0.2, "a workers-only cook running")
        expected = sorted(["cook-0.host-a", f"cook-0.{socket.gethostname().split('.')[0]}"])
        router = Router(every, timeout_s=5.0)
        try:
            def settled() -> bool:
                members = router.call(p.DescribeGroup(group="cook")).members
                return sorted(m.member_id for m in members) == expected \
                    and all(m.assignment for m in members)
            wait_for(settled, 60, 0.2, f"members {expected}, each with partitions")
        finally:
            router.close()
        send_and_check_each_handled_once(every, outs)
    finally:
        try:
            for up in ups:
                stop_process(up, 30)
        finally:
            for b in brokers:
                b.stop()
    assert [up.returncode for up in ups] == [0, 0]
    bad = rail("up", "--broker", every, "--node", "../x", "-c", str(tmp_path / "s0" / "rail.toml"))
    assert bad.returncode != 0 and "--node '../x'" in bad.stderr, bad.stderr


def test_delayed_events_arrive_once_after_their_time_on_a_cluster(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """``delays = true`` on a workers-only supervisor given the cluster's endpoints: its
    delay mover (which once opened one connection on the whole endpoint list and died)
    forwards each delayed event once, never before its time."""
    brokers = [start_member(tmp_path, zookeeper, i) for i in range(2)]
    every = ",".join(b.api for b in brokers)
    folder, out = tmp_path / "s", tmp_path / "out.txt"
    folder.mkdir()
    (folder / "rec.py").write_text(
        "import time\n"
        f"def handle(event, ctx):\n    with open({str(out)!r}, 'a') as f:\n"
        "        f.write(f'{event.value} {time.time()}\\n')\n")
    control = f"tcp://127.0.0.1:{free_port()}"
    (folder / "rail.toml").write_text(
        f'[supervisor]\ncontrol = "{control}"\ngrace_s = 5\ndelays = true\n'
        '[topics.orders]\npartitions = 2\n'
        '[workers.rec]\nscript = "rec.py"\ntopics = ["orders"]\n')
    up = start_up(folder / "rail.toml", "--broker", every)
    try:
        def running() -> bool:
            s = status(control)
            return bool(s and all(w["state"] == "running" for w in s["workers"])
                        and any(w["name"] == "rec" for w in s["workers"]))
        wait_for(running, 60, 0.2, "the recorder running")

        def delays_led() -> bool:  # the mover's topic exists and has its leaders
            meta = metadata(brokers[0].api, DELAY_TOPIC)
            return bool(meta and meta["topics"] and all(
                x["leader"] >= 0 for x in meta["topics"][0]["partitions"]))
        wait_for(delays_led, 60, 0.2, f"{DELAY_TOPIC} created and led")
        due: dict[str, float] = {}
        with Producer(every, acks="all") as producer:
            for i in range(20):
                due[f"d{i}"] = time.time() + 2.0
                producer.send_delayed("orders", f"d{i}", key=str(i), delay_s=2.0)
            producer.flush()
            assert not producer.errors
        wait_for(lambda: len(written_lines(out)) >= 20, 60, 0.2, "20 delayed events")
        time.sleep(1.0)  # nothing more comes
        got = [line.split() for line in written_lines(out)]
        assert sorted(v for v, _ in got) == sorted(due)
        assert all(float(t) >= due[v] - 0.05 for v, t in got), "one arrived before its time"
    finally:
        stop_process(up, 30)
        for b in brokers:
            b.stop()
    assert up.returncode == 0, (folder / "up.err").read_text()[-2000:]
