"""``rail cluster status`` against real brokers: healthy, then a broker killed with kill -9
shows as under-replicated partitions (exit 1); a single broker is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cluster.client import wait_in_sync
from tests.cluster.test_groups_coordinator import find_coordinator
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from runtime.client import Producer
from tests.helpers import (ROOT, free_port, python_env, start_broker, stop_process, wait_for,
                           written_lines)


def rail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT,
                          env=python_env(), capture_output=True, text=True, timeout=30,
                          check=False)


def test_cluster_status_shows_brokers_leaders_and_what_is_under_replicated(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        assert rail("topics", "create", "t", "--partitions", "3", "--broker", apis[0]).returncode == 0
        wait_in_sync(apis, "t", 3, 3)
        healthy = rail("cluster", "status", "--all", "--broker", apis[1])
        assert healthy.returncode == 0, healthy.stderr
        assert "3 brokers, controller" in healthy.stdout
        assert "3 partitions: 0 offline, 0 under-replicated" in healthy.stdout
        assert healthy.stdout.count(" ok") == 3

        brokers[2].kill9()

        def degraded() -> dict | None:
            run = rail("cluster", "status", "--json", "--broker", apis[0])
            status = json.loads(run.stdout) if run.stdout else None
            return status if run.returncode == 1 and status and status["under_replicated"] else None
        status = wait_for(degraded, 60, interval=0.5, what="under-replicated partitions")
        assert sorted(b["id"] for b in status["brokers"]) == [0, 1]
        assert all(2 not in x["isr"] for x in status["partitions"] if x["state"] != "ok")
        assert status["offline"] == 0
    finally:
        for b in brokers:
            b.stop()


def test_cluster_status_of_a_single_broker_says_it_is_not_a_cluster(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "data")
    try:
        run = rail("cluster", "status", "--broker", broker.api)
        assert run.returncode == 1
        assert "single broker, not a member of a cluster" in run.stderr
    finally:
        broker.stop()


def test_rail_given_the_clusters_endpoints_sends_tails_and_describes_groups_through_a_kill_9(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """``--broker tcp://a,tcp://b,tcp://c``: each request goes to the broker that serves it
    (a group's coordinator, a partition's leader), and on after one of them is killed."""
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        every = ",".join(apis)
        assert rail("topics", "create", "t", "--partitions", "3", "--broker", every).returncode == 0
        wait_in_sync(apis, "t", 3, 3)
        sent = subprocess.run(
            [sys.executable, "-m", "runtime.cli", "send", "t", "--file", "-", "--broker", every],
            input="".join(f'{{"n": {i}}}\n' for i in range(30)), cwd=ROOT, env=python_env(),
            capture_output=True, text=True, timeout=30, check=False)
        assert sent.returncode == 0, sent.stderr
        tail = rail("tail", "t", "--from-beginning", "--broker", every)
        assert tail.returncode == 0, tail.stderr
        assert len(tail.stdout.splitlines()) == 30
        read = rail("tail", "t", "--group", "cooks", "--from-beginning", "--broker", every)
        assert read.returncode == 0 and len(read.stdout.splitlines()) == 30, read.stderr
        groups = rail("groups", "--json", "--broker", every)
        assert groups.returncode == 0, groups.stderr
        [cooks] = [g for g in json.loads(groups.stdout) if g["group"] == "cooks"]
        assert sum(x["committed"] or 0 for x in cooks["partitions"]) == 30

        coordinator = int(json.loads(rail("cluster", "status", "--json", "--broker", every)
                                     .stdout)["controller"])
        brokers[coordinator].kill9()  # the controller, maybe the group's coordinator too

        def described() -> dict | None:
            run = rail("groups", "describe", "cooks", "--json", "--broker", every)
            return json.loads(run.stdout) if run.returncode == 0 else None
        again = wait_for(described, 60, interval=0.5, what="the group described after the kill")
        assert sum(x["committed"] or 0 for x in again["partitions"]) == 30

        # Offsets moved back and the group deleted, at whichever broker coordinates it now.
        reset = rail("groups", "reset-offsets", "cooks", "--topic", "t", "--to-earliest",
                     "--execute", "--broker", every)
        assert reset.returncode == 0, reset.stderr
        moved = described()
        assert moved is not None and sum(x["committed"] or 0 for x in moved["partitions"]) == 0
        reread = rail("tail", "t", "--group", "cooks", "--broker", every)
        assert reread.returncode == 0 and len(reread.stdout.splitlines()) == 30, reread.stderr
        deleted = rail("groups", "delete", "cooks", "--broker", every)
        assert deleted.returncode == 0, deleted.stderr
        listed = rail("groups", "--json", "--broker", every)
        assert listed.returncode == 0, listed.stderr
        assert "cooks" not in [g["group"] for g in json.loads(listed.stdout)]
    finally:
        for b in brokers:
            b.stop()


def test_rail_up_runs_workers_on_a_cluster(tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """``rail up --broker tcp://a,tcp://b,tcp://c``: the supervisor creates rail.toml's
    topics in the cluster, its workers consume from the leaders, and ``rail status``
    counts what they committed at the group's coordinator."""
    brokers = start_three(tmp_path, zookeeper)
    up: subprocess.Popen[bytes] | None = None
    control = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "out.txt"
    try:
        every = ",".join(b.api for b in brokers)
        (tmp_path / "cook.py").write_text(
            f"def handle(event, ctx):\n    with open({str(out)!r}, 'a') as f:\n"
            "        f.write(f'{event.value}\\n')\n")
        (tmp_path / "rail.toml").write_text(
            f'[supervisor]\ncontrol = "{control}"\ngrace_s = 5\n'
            '[topics.orders]\npartitions = 3\n'
            '[workers.cook]\nscript = "cook.py"\ntopics = ["orders"]\nreplicas = 2\n')
        with open(tmp_path / "up.err", "wb") as err:
            up = subprocess.Popen([sys.executable, "-m", "runtime.cli", "up", "-c",
                                   str(tmp_path / "rail.toml"), "--broker", every],
                                  stdout=subprocess.DEVNULL, stderr=err, env=python_env(),
                                  cwd=ROOT)

        def status() -> dict | None:
            run = rail("status", "--json", "--control", control)
            return json.loads(run.stdout) if run.returncode == 0 else None
        wait_for(lambda: (s := status()) and s["workers"][0]["state"] == "running"
                 and len(s["workers"][0]["pids"]) == 2, 60, what="two cooks running")
        with Producer(every, acks="all") as producer:
            for i in range(300):
                producer.send("orders", i, key=str(i))
        wait_for(lambda: len(written_lines(out)) >= 300, 60, what="300 events handled")
        assert sorted(int(v) for v in written_lines(out)) == list(range(300))
        wait_for(lambda: (s := status()) and s["workers"][0]["processed"] == 300, 30,
                 what="rail status to count 300 committed")
    finally:
        if up is not None:
            stop_process(up)
        for b in brokers:
            b.stop()


def test_rail_dlq_lists_replays_and_purges_on_a_cluster_through_a_kill_9(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """``rail dlq`` given the cluster's endpoints (replay and purge once took the list for
    one endpoint and died with a ZeroMQ traceback), or one of them: each dead letter
    replayed once across a kill -9 of the controller, then purged."""
    from runtime.client import Event
    from runtime.dlq import REPLAYED_FROM, dead_letter_headers

    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        every = ",".join(apis)
        for topic in ("orders", "orders.dlq"):
            made = rail("topics", "create", topic, "--partitions", "2", "--broker", every)
            assert made.returncode == 0, made.stderr
        wait_in_sync(apis, "orders.dlq", 2, 3)
        with Producer(every, acks="all") as producer:
            for i in range(10):
                original = Event("orders", 0, i, {"n": i}, f"k{i}", {"trace": str(i)}, 0)
                producer.send("orders.dlq", original.value, key=original.key, partition=i % 2,
                              headers=dead_letter_headers(original, ValueError("no oven"), 4))
            producer.flush()
            assert not producer.errors
        for api in apis:  # one endpoint is enough (rail asks it for the cluster's brokers)
            listed = rail("dlq", "list", "orders", "--json", "--broker", api)
            assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 10, \
                listed.stderr
        # ... also for the replay's group requests: sent to a broker that does not
        # coordinate the replay's group (it failed so with NOT_COORDINATOR)
        coordinator, _ = find_coordinator(apis[0], "rail.dlq-replay.orders.dlq")
        first = rail("dlq", "replay", "orders", "-p", "0", "--broker",
                     apis[(coordinator + 1) % 3])
        assert first.returncode == 0 and "replayed 5 dead letters" in first.stderr, first.stderr

        controller = int(json.loads(rail("cluster", "status", "--json", "--broker", every)
                                    .stdout)["controller"])
        brokers[controller].kill9()

        def replayed_rest() -> str | None:
            run = rail("dlq", "replay", "orders", "--broker", every)
            return run.stderr if run.returncode == 0 else None
        rest = wait_for(replayed_rest, 60, interval=0.5, what="a replay after the kill")
        assert "replayed 5 dead letters" in rest, rest
        again = rail("dlq", "replay", "orders", "--broker", every)
        assert again.returncode == 0 and "replayed 0 dead letters" in again.stderr, again.stderr
        read = rail("tail", "orders", "--from-beginning", "--json", "--broker", every)
        assert read.returncode == 0, read.stderr
        sources = sorted(json.loads(line)["headers"][REPLAYED_FROM]
                         for line in read.stdout.splitlines())
        assert sources == sorted(f"orders.dlq[{i % 2}]@{i // 2}" for i in range(10))
        purged = rail("dlq", "purge", "orders", "--all", "--yes", "--broker", every)
        assert purged.returncode == 0 and "purged 10 dead letters" in purged.stderr, purged.stderr
        left = rail("dlq", "list", "orders", "--json", "--broker", every)
        assert left.returncode == 0 and json.loads(left.stdout) == [], left.stderr
    finally:
        for b in brokers:
            b.stop()
