"""Partition reassignment and preferred-leader election against a real ZooKeeper and three
real brokers: replicas move (the leader's too) while ``acks=all`` producers keep sending,
a reassignment survives a kill -9 of the controller, leadership goes back to the preferred
replica after a killed broker returns (``rail cluster elect-leaders``, and the controller's
automatic rebalance), and bad plans change nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.client import BrokerError, Producer
from tests.cluster.client import (
    LeaderProducer,
    check_history,
    check_replicas,
    metadata,
    read_log,
    start_member,
    wait_in_sync,
)
from tests.cluster.test_admin import _consume, _leader_api
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import ROOT, BrokerProcess, python_env, start_broker, wait_for
from tests.integration.wire import RawClient

SESSION = "zookeeper_session_timeout_ms = 4000\n"  # failover in seconds, not tens


def rail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT,
                          env=python_env(), capture_output=True, text=True, timeout=30,
                          check=False)


class Keyed:
    """The Python ``Producer`` given the cluster's endpoints, sending keyed events with
    ``acks="all"`` from a thread until stopped; what it acknowledged, by callback."""

    def __init__(self, apis: list[str], topic: str) -> None:
        self.producer = Producer(",".join(apis), acks="all", request_timeout_s=30)
        self.topic = topic
        self.acked: list[tuple[int, int, Any]] = []
        self.failed: list[BrokerError] = []
        self.sent = 0
        self.closed = False
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            value = f"keyed-{self.sent}"

            def done(partition: int, offset: int, error: BrokerError | None,
                     value: str = value) -> None:
                if error is None:
                    self.acked.append((partition, offset, value))
                else:
                    self.failed.append(error)
            self.producer.send(self.topic, value, key=f"k{self.sent % 13}", callback=done)
            self.sent += 1
            if self.sent % 20 == 0:
                self.stop_event.wait(0.01)  # a steady stream, not one burst

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)
        self.producer.flush(timeout_s=60)
        self.close(timeout_s=5)
        assert not self.failed and not self.producer.errors, \
            (self.failed + self.producer.errors)[:3]
        assert len(self.acked) == self.sent > 0

    def close(self, timeout_s: float) -> None:
        self.stop_event.set()
        if not self.closed:
            self.closed = True
            self.producer.close(timeout_s=timeout_s)


class Sending:
    """Producers in threads, each sending its own numbered values with ``acks=all`` to its
    partitions, batch after batch, until stopped."""

    def __init__(self, apis: list[str], targets: list[tuple[str, list[int]]]) -> None:
        self.producers = [LeaderProducer(apis, topic, producer_id=100 + i)
                          for i, (topic, _) in enumerate(targets)]
        self.stop_event = threading.Event()
        self.failures: list[Exception] = []
        self.threads = [threading.Thread(target=self._run, args=(prod, parts), daemon=True)
                        for prod, (_, parts) in zip(self.producers, targets)]
        for t in self.threads:
            t.start()

    def _run(self, producer: LeaderProducer, partitions: list[int]) -> None:
        n = 0
        try:
            while not self.stop_event.is_set():
                part = partitions[n % len(partitions)]
                producer.send(part, [f"{producer.topic}-{n}-{i}" for i in range(5)])
                n += 1
                self.stop_event.wait(0.01)
        except (TimeoutError, AssertionError, OSError) as exc:  # stop() asserts none
            self.failures.append(exc)

    def acked(self, topic: str) -> list[tuple[int, int, Any]]:
        return [a for prod in self.producers if prod.topic == topic for a in prod.acked]

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(70)
        for prod in self.producers:
            prod.close()
        assert not self.failures, self.failures
        assert all(prod.acked for prod in self.producers), "a producer never got an ack"


def _partition(api: str, topic: str, partition: int) -> dict[str, Any]:
    meta = metadata(api, topic)
    assert meta is not None, f"no metadata from {api}"
    return meta["topics"][0]["partitions"][partition]


def _reassignments(api: str) -> list[dict[str, Any]]:
    with RawClient(api) as raw:
        return raw.ok("list_reassignments")["reassignments"]


def _logs(brokers: list[BrokerProcess], ids: list[int], topic: str
          ) -> dict[str, dict[int, list[tuple[int, bytes]]]]:
    return {str(i): {0: read_log(brokers[i].data_dir, topic, 0)} for i in ids}


def test_replicas_move_with_the_leader_under_acks_all_producers_and_bad_plans_change_nothing(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """``a`` moves from {0,1} to {1,2} (its leader 0 leaves), ``b`` from {0,1} to {0,2}
    (a follower leaves), in one plan through ``rail cluster reassign --plan``."""
    brokers = start_three(tmp_path, zookeeper, SESSION)
    sending: Sending | None = None
    keyed: Keyed | None = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            for name in ("a", "b"):
                raw.ok("create_topic", topic=name, partitions=1,
                       config={"replication_factor": 2})
        for name in ("a", "b"):
            wait_in_sync(apis, name, 1, 2)
            assert _partition(apis[0], name, 0)["replicas"] == [0, 1]

        with RawClient(apis[2]) as raw:  # bad plans: specific errors, nothing changed
            def bad(*items: dict[str, Any]) -> str:
                return raw.error_code("reassign_partitions", partitions=list(items))
            assert bad({"topic": "nope", "partition": 0, "replicas": [1, 2]}) == "UNKNOWN_TOPIC"
            assert bad({"topic": "a", "partition": 3, "replicas": [1, 2]}) == "UNKNOWN_PARTITION"
            assert bad({"topic": "a", "partition": 0, "replicas": [1, 7]}) == "BAD_REQUEST"
            assert bad({"topic": "a", "partition": 0, "replicas": [2, 2]}) == "BAD_REQUEST"
            assert bad({"topic": "a", "partition": 0, "replicas": []}) == "BAD_REQUEST"
            assert bad({"topic": "a", "partition": 0, "replicas": [2]}) == "BAD_REQUEST"  # < min isr
            assert bad({"topic": "b", "partition": 0, "replicas": [0, 2]},
                       {"topic": "a", "partition": 0, "replicas": [1, 9]}) == "BAD_REQUEST"
            assert raw.error_code("reassign_partitions", partitions=[]) == "BAD_REQUEST"
            assert raw.call("reassign_partitions", partitions=[{"topic": "a", "partition": 0,
                            "replicas": [1, 7]}])["message"].startswith("a[0]: no live broker")
            controller = raw.ok("metadata", topics=["a"])["controller"]
            other = next(i for i in range(3) if i != controller)
        with RawClient(apis[other]) as raw:
            assert raw.error_code("elect_leaders") == "NOT_CONTROLLER"
        run = rail("cluster", "reassign", "a", "0", "--replicas", "1,7", "--broker", apis[0])
        assert run.returncode == 1 and "BAD_REQUEST: a[0]: no live broker has id 7" in run.stderr
        run = rail("cluster", "reassign", "a", "0", "--broker", apis[0])
        assert run.returncode == 2 and "--replicas" in run.stderr
        assert _reassignments(apis[1]) == []
        for name in ("a", "b"):
            assert _partition(apis[2], name, 0)["replicas"] == [0, 1]

        sending = Sending(apis, [("a", [0]), ("b", [0])])
        keyed = Keyed(apis, "a")
        wait_for(lambda: all(len(sending.acked(t)) >= 50 for t in ("a", "b")), timeout=20,
                 interval=0.1, what="acks before the move")
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps({"partitions": [
            {"topic": "a", "partition": 0, "replicas": [1, 2]},
            {"topic": "b", "partition": 0, "replicas": [0, 2]}]}))
        run = rail("cluster", "reassign", "--plan", str(plan), "--broker", apis[1])
        assert run.returncode == 0, run.stderr
        assert "a[0]: moving to 1,2" in run.stdout
        wait_for(lambda: rail("cluster", "reassign", "--plan", str(plan), "--verify",
                              "--broker", f"{apis[0]},{apis[2]}").returncode == 0,
                 timeout=30, interval=0.3, what="the plan complete")
        wait_for(lambda: all(len(sending.acked(t)) >= 200 for t in ("a", "b")), timeout=20,
                 interval=0.1, what="acks after the move")
        sending.stop()
        keyed.stop()
        verify = rail("cluster", "reassign", "--plan", str(plan), "--verify", "--json",
                      "--broker", apis[2])
        assert [r["state"] for r in json.loads(verify.stdout)] == ["complete", "complete"]
        assert "no reassignment in progress" in rail("cluster", "reassign", "--list",
                                                     "--broker", apis[0]).stdout

        for name, replicas, gone in (("a", [1, 2], 0), ("b", [0, 2], 1)):
            leaders = wait_in_sync(apis, name, 1, 2)
            assert leaders[0] in replicas
            for api in apis:  # every broker's metadata, also of one that lost its copy
                assert _partition(api, name, 0)["replicas"] == replicas
            wait_for(lambda name=name, gone=gone: not (
                brokers[gone].data_dir / "topics" / name).exists(), timeout=10,
                interval=0.1, what=f"broker {gone}'s copy of {name} deleted")
            consumed = _consume(_leader_api(apis, name, 0), name, 0)
            acked = [v for _, _, v in sending.acked(name) + (keyed.acked if name == "a" else [])]
            assert sorted(consumed) == sorted(set(consumed)), f"{name}: a duplicate"
            assert set(acked) <= set(consumed), f"{name}: an acknowledged event is missing"
    finally:
        if sending is not None:
            sending.stop_event.set()
        if keyed is not None:
            with contextlib.suppress(BrokerError):  # a failed run must still stop the brokers
                keyed.close(timeout_s=1)
        for b in brokers:
            b.stop()
    check_history(sending.acked("a") + keyed.acked, _logs(brokers, [1, 2], "a"))
    check_history(sending.acked("b"), _logs(brokers, [0, 2], "b"))


def test_a_reassignment_completes_on_the_next_controller_after_a_kill_9(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The new replica is paused (SIGSTOP) so the reassignment stops half-way (old and new
    replicas in the list, the new one not in sync); the controller is killed with kill -9
    and the new replica woken: the next controller finishes it from ZooKeeper."""
    brokers = start_three(tmp_path, zookeeper, SESSION)
    sending: Sending | None = None
    paused: BrokerProcess | None = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="c", partitions=3, config={"replication_factor": 2})
        wait_in_sync(apis, "c", 3, 2)
        controller = metadata(apis[0], "c")["controller"]  # type: ignore[index]
        x = next(i for i in range(3) if i != controller)  # the new replica
        z = 3 - controller - x
        part = next(i for i in range(3) if x not in _partition(apis[0], "c", i)["replicas"])
        assert sorted(_partition(apis[0], "c", part)["replicas"]) == sorted([controller, z])
        sending = Sending([apis[controller], apis[z], apis[x]], [("c", [part])])
        wait_for(lambda: len(sending.acked("c")) >= 50, timeout=20, interval=0.1,
                 what="acks before the move")

        os.kill(brokers[x].pid, signal.SIGSTOP)
        paused = brokers[x]
        target = [x, z]
        run = rail("cluster", "reassign", "c", str(part), "--replicas", f"{x},{z}",
                   "--broker", apis[z])
        assert run.returncode == 0, run.stderr
        with RawClient(apis[z]) as raw:
            # In progress: another move of it, alone or in a plan, fails whole (the same
            # move asked again only changes its throttle).
            reply = raw.call("reassign_partitions",
                             partitions=[{"topic": "c", "partition": part, "replicas": [z, x]}])
            assert reply["code"] == "BAD_REQUEST" and "being reassigned" in reply["message"]
            other = (part + 1) % 3
            assert raw.error_code("reassign_partitions", partitions=[
                {"topic": "c", "partition": other, "replicas": [controller, z]},
                {"topic": "c", "partition": part, "replicas": [z, x]}]) == "BAD_REQUEST"
        listed = _reassignments(apis[z])
        assert [(r["partition"], r["replicas"], r["adding"], r["removing"]) for r in listed] \
            == [(part, target, [x], [controller])]
        wait_for(lambda: len(_partition(apis[z], "c", part)["replicas"]) == 3, timeout=10,
                 interval=0.1, what="old and new replicas in the list")
        status = rail("cluster", "status", "--broker", apis[z])
        assert "1 reassignment in progress" in status.stdout, status.stdout + status.stderr
        assert f"c[{part}] -> {x},{z} (adding {x}, removing {controller})" in status.stdout
        assert f"c[{part}] -> {x},{z}" in rail("cluster", "reassign", "--list", "--broker",
                                                apis[z]).stdout
        assert x not in _partition(apis[z], "c", part)["isr"]

        brokers[controller].kill9()
        os.kill(brokers[x].pid, signal.SIGCONT)
        paused = None
        live = [apis[z], apis[x]]
        wait_for(lambda: _reassignments(apis[z]) == [], timeout=40, interval=0.3,
                 what="the reassignment completed by the next controller")
        assert metadata(apis[z], "c")["controller"] != controller  # type: ignore[index]
        assert _partition(apis[z], "c", part)["replicas"] == target
        wait_for(lambda: sorted(_partition(_leader_api(live, "c", part), "c", part)["isr"])
                 == sorted(target),
                 timeout=20, interval=0.2, what="both new replicas in sync")
        count = len(sending.acked("c"))
        wait_for(lambda: len(sending.acked("c")) >= count + 50, timeout=20, interval=0.1,
                 what="acks after the move")
        sending.stop()
        # The old controller, removed while it was down, comes back: it empties its copy
        # of the partition it lost and keeps the others.
        segment = brokers[controller].data_dir / "topics" / "c" / str(part) / f"{0:020d}.log"
        assert segment.stat().st_size > 0
        brokers[controller] = start_member(tmp_path, zookeeper, controller, "--config",
                                           str(tmp_path / "broker.toml"))
        wait_for(lambda: segment.stat().st_size == 0, timeout=15, interval=0.1,
                 what="the removed copy emptied")
        wait_in_sync([b.api for b in brokers], "c", 3, 2)
    finally:
        if paused is not None:
            os.kill(paused.pid, signal.SIGCONT)
        if sending is not None:
            sending.stop_event.set()
        for b in brokers:
            b.stop()
    logs = {str(i): {part: read_log(brokers[i].data_dir, "c", part)} for i in target}
    check_history(sending.acked("c"), logs)
    assert read_log(brokers[controller].data_dir, "c", part) == []


@pytest.mark.parametrize("how", ["elect-leaders", "auto"])
def test_leadership_goes_back_to_the_preferred_replica_after_a_kill_9(
        tmp_path: Path, zookeeper: ZooKeeper, how: str) -> None:
    """A broker leading a partition is killed with kill -9 and restarted; once it is in
    sync again, ``rail cluster elect-leaders`` (the automatic rebalance switched off, so
    nothing moves before it) or the controller's rebalance timer makes it leader again."""
    auto = ("auto_leader_rebalance = true\nleader_imbalance_check_interval_ms = 1000\n"
            if how == "auto" else "auto_leader_rebalance = false\n")
    brokers = start_three(tmp_path, zookeeper, SESSION + auto)
    ports = [int(b.api.rsplit(":", 1)[1]) for b in brokers]
    sending: Sending | None = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="e", partitions=3)
        wait_in_sync(apis, "e", 3, 3)
        controller = metadata(apis[0], "e")["controller"]  # type: ignore[index]
        victim = next(i for i in range(3) if i != controller)
        preferred = {i: _partition(apis[0], "e", i)["replicas"][0] for i in range(3)}
        assert sorted(preferred.values()) == [0, 1, 2]
        sending = Sending(apis, [("e", [0, 1, 2])])
        wait_for(lambda: len(sending.acked("e")) >= 60, timeout=20, interval=0.1,
                 what="acks before the kill")

        brokers[victim].kill9()
        mine = next(i for i, b in preferred.items() if b == victim)
        wait_for(lambda: _partition(apis[controller], "e", mine)["leader"] not in (victim, -1),
                 timeout=20, interval=0.2, what="a new leader of the victim's partition")
        brokers[victim] = start_member(tmp_path, zookeeper, victim, "--config",
                                       str(tmp_path / "broker.toml"), api_port=ports[victim])
        wait_for(lambda: all(len(_partition(apis[controller], "e", i)["isr"]) == 3
                             for i in range(3)), timeout=30, interval=0.2,
                 what="the victim back in sync")

        def preferred_lead() -> bool:
            return all(_partition(apis[controller], "e", i)["leader"] == preferred[i]
                       for i in range(3))
        if how == "elect-leaders":
            time.sleep(2)  # the rebalance switched off: nothing moves by itself
            assert not preferred_lead()
            run = rail("cluster", "elect-leaders", "e", "--broker", apis[victim])
            assert run.returncode == 0, run.stdout + run.stderr
            assert "3 partitions led by the preferred replica, 0 not" in run.stdout
            assert preferred_lead()
            one = rail("cluster", "elect-leaders", "e", "7", "--broker", apis[controller])
            assert one.returncode == 1 and "UNKNOWN_PARTITION" in one.stderr
        else:
            wait_for(preferred_lead, timeout=20, interval=0.2,
                     what="the rebalance timer giving the partition back")
        wait_in_sync(apis, "e", 3, 3)
        count = len(sending.acked("e"))
        wait_for(lambda: len(sending.acked("e")) >= count + 60, timeout=20, interval=0.1,
                 what="acks after the election")
        sending.stop()
    finally:
        if sending is not None:
            sending.stop_event.set()
        for b in brokers:
            b.stop()
    check_replicas(brokers, "e", 3, sending.acked("e"))


def test_a_single_broker_refuses_reassignment_and_election_clearly(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "data")
    try:
        with RawClient(broker.api) as raw:
            raw.ok("create_topic", topic="t", partitions=1)
            for op, fields in (("reassign_partitions", {"partitions": [
                    {"topic": "t", "partition": 0, "replicas": [1]}]}),
                    ("list_reassignments", {}), ("elect_leaders", {})):
                reply = raw.call(op, **fields)
                assert reply["code"] == "BAD_REQUEST" and "not in a cluster" in reply["message"]
            assert raw.ok("ping")["op"] == "ping"  # still serving
        run = rail("cluster", "elect-leaders", "--broker", broker.api)
        assert run.returncode == 1 and "single broker" in run.stderr
    finally:
        broker.stop()



def test_a_cancelled_reassignment_puts_the_replicas_back_under_an_acks_all_producer(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """A reassignment stopped half-way (its new replica paused, SIGSTOP: old and new
    replicas in the list) is cancelled with ``rail cluster reassign TOPIC PARTITION
    --cancel``: the list goes back to the old replicas without waiting for the new one,
    which, woken, drops its copy; the producer's acknowledged events are all there once,
    the old replicas identical; a second cancel says it is not in progress (exit 1)."""
    brokers = start_three(tmp_path, zookeeper, SESSION)
    sending: Sending | None = None
    paused: BrokerProcess | None = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="k", partitions=3, config={"replication_factor": 2})
        wait_in_sync(apis, "k", 3, 2)
        part = 0
        original = _partition(apis[0], "k", part)["replicas"]
        x = next(i for i in range(3) if i not in original)  # the new replica
        stays, leaves = original[1], original[0]
        sending = Sending([apis[i] for i in original] + [apis[x]], [("k", [part])])
        wait_for(lambda: len(sending.acked("k")) >= 50, timeout=20, interval=0.1,
                 what="acks before the move")
        os.kill(brokers[x].pid, signal.SIGSTOP)
        paused = brokers[x]
        run = rail("cluster", "reassign", "k", str(part), "--replicas", f"{x},{stays}",
                   "--broker", apis[stays])
        assert run.returncode == 0, run.stderr
        wait_for(lambda: len(_partition(apis[stays], "k", part)["replicas"]) == 3, timeout=10,
                 interval=0.1, what="old and new replicas in the list")
        assert x not in _partition(apis[stays], "k", part)["isr"]

        run = rail("cluster", "reassign", "k", str(part), "--cancel", "--broker", apis[leaves])
        assert run.returncode == 0 and "cancelled" in run.stdout, run.stdout + run.stderr
        wait_for(lambda: _reassignments(apis[stays]) == [], timeout=20, interval=0.1,
                 what="the cancellation carried out (the new replica still paused)")
        for api in (apis[stays], apis[leaves]):
            assert _partition(api, "k", part)["replicas"] == original
        assert sorted(_partition(apis[stays], "k", part)["isr"]) == sorted(original)
        count = len(sending.acked("k"))
        wait_for(lambda: len(sending.acked("k")) >= count + 50, timeout=20, interval=0.1,
                 what="acks after the cancel")

        again = rail("cluster", "reassign", "k", str(part), "--cancel", "--broker", apis[stays])
        assert again.returncode == 1 and "NOT_IN_PROGRESS" in again.stdout, \
            again.stdout + again.stderr
        none = rail("cluster", "reassign", "--cancel", "--broker", apis[stays])
        assert none.returncode == 0 and "no reassignment in progress" in none.stdout, \
            none.stdout + none.stderr
        with RawClient(apis[stays]) as raw:
            assert raw.error_code("cancel_reassignments",
                                  partitions=[{"topic": "../etc", "partition": 0}]) \
                == "INVALID_TOPIC"
            assert raw.ok("ping")["op"] == "ping"

        os.kill(brokers[x].pid, signal.SIGCONT)  # it learns it is not a replica: its copy goes
        paused = None
        wait_for(lambda: _dropped(brokers[x], "k", part), timeout=15, interval=0.1,
                 what="the new replica's copy emptied")
        sending.stop()
    finally:
        if paused is not None:
            os.kill(paused.pid, signal.SIGCONT)
        if sending is not None:
            sending.stop_event.set()
        for b in brokers:
            b.stop()
    logs = {str(i): {part: read_log(brokers[i].data_dir, "k", part)} for i in original}
    check_history(sending.acked("k"), logs)


def _dropped(broker: BrokerProcess, topic: str, partition: int) -> bool:
    """Whether a running broker holds no records of the partition (looked at on disk
    without opening its log, which would recover the tail it writes)."""
    folder = broker.data_dir / "topics" / topic / str(partition)
    return not folder.exists() or all(f.stat().st_size == 0 for f in folder.glob("*.log"))


def _until_done(api: str, timeout: float) -> float:
    """Seconds until no reassignment is in progress."""
    started = time.monotonic()
    wait_for(lambda: _reassignments(api) == [], timeout=timeout, interval=0.05,
             what="the reassignment done")
    return time.monotonic() - started


def test_a_throttled_reassignment_copies_at_the_rate_asked(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """``--throttle 400000``: the new replica copies 2 MB at 400 kB/s (one second's worth
    at once, then the rate), so it takes at least 3 s, where the same copy unthrottled
    takes a fraction of it; the copy is identical and ends in sync."""
    brokers = start_three(tmp_path, zookeeper, SESSION)
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="big", partitions=1, config={"replication_factor": 2})
        wait_in_sync(apis, "big", 1, 2)
        original = _partition(apis[0], "big", 0)["replicas"]
        x = next(i for i in range(3) if i not in original)
        # batches of 20 kB: a throttled fetch sends at least one whole batch
        with Producer(",".join(apis), acks="all", batch_size=20) as producer:
            for _ in range(2_000):
                producer.send("big", os.urandom(1_000))  # incompressible: 2 MB on disk
            producer.flush(timeout_s=60)
            assert not producer.errors, producer.errors[:3]
        grown = ",".join(map(str, original + [x]))

        run = rail("cluster", "reassign", "big", "0", "--replicas", grown, "--throttle",
                   "400000", "--broker", apis[0])
        assert run.returncode == 0, run.stderr
        listed = rail("cluster", "reassign", "--list", "--broker", apis[0]).stdout
        assert "throttled to 400,000 B/s" in listed, listed
        throttled = _until_done(apis[0], 60)
        assert throttled >= 3.0, f"2 MB at 400 kB/s took {throttled:.2f} s"
        wait_in_sync(apis, "big", 1, 3)

        back = ",".join(map(str, original))
        assert rail("cluster", "reassign", "big", "0", "--replicas", back, "--broker",
                    apis[0]).returncode == 0
        _until_done(apis[0], 30)
        wait_for(lambda: _dropped(brokers[x], "big", 0), timeout=15, interval=0.1,
                 what="the copy dropped")
        assert rail("cluster", "reassign", "big", "0", "--replicas", grown, "--broker",
                    apis[0]).returncode == 0
        unthrottled = _until_done(apis[0], 30)
        assert unthrottled < throttled / 2, (unthrottled, throttled)
        wait_in_sync(apis, "big", 1, 3)

        # A running throttle changes when the same move is asked again: 2 MB at 20 kB/s
        # would take 100 s; lifted after a second, the copy ends within seconds.
        assert rail("cluster", "reassign", "big", "0", "--replicas", back, "--broker",
                    apis[0]).returncode == 0
        _until_done(apis[0], 30)
        wait_for(lambda: _dropped(brokers[x], "big", 0), timeout=15, interval=0.1,
                 what="the copy dropped")
        slow = rail("cluster", "reassign", "big", "0", "--replicas", grown, "--throttle",
                    "20000", "--broker", apis[0])
        assert slow.returncode == 0 and "at most 20,000 B/s" in slow.stdout, slow
        time.sleep(1.0)
        assert _reassignments(apis[0]), "done at 20 kB/s in a second"
        other = rail("cluster", "reassign", "big", "0", "--replicas", back, "--broker", apis[0])
        assert other.returncode != 0 and "being reassigned already" in other.stderr, other
        lifted = rail("cluster", "reassign", "big", "0", "--replicas", grown, "--throttle", "0",
                      "--broker", apis[0])
        assert lifted.returncode == 0, lifted.stderr
        assert "throttled" not in rail("cluster", "reassign", "--list", "--broker",
                                       apis[0]).stdout
        assert _until_done(apis[0], 30) < 15
        wait_in_sync(apis, "big", 1, 3)
        with RawClient(apis[0]) as raw:
            assert raw.error_code("reassign_partitions", partitions=[
                {"topic": "big", "partition": 0, "replicas": original, "throttle": -1}]) \
                == "BAD_REQUEST"
    finally:
        for b in brokers:
            b.stop()
    copies = [read_log(b.data_dir, "big", 0) for b in brokers]
    assert len(copies[0]) == 2_000 and copies[0] == copies[1] == copies[2]
