"""Rail Streams on a cluster: a counting pipeline run by a worker given the cluster's
endpoints.  Through a kill -9 of the broker leading the most of its partitions (input,
changelog and output) and a kill -9 of the worker itself, the table and the output topic
equal the reference exactly: every count once, in order, none lost, none twice.

A leader that moves or dies under the worker's sends does not stop it: what the dead
leader did not answer goes again to the new one, in place, and its deterministic producer
ids and sequences make a batch the old leader had stored a duplicate on the new one (the
idempotent-producer state travels in the replicated batches, docs/cluster.md).  The
worker's own kill -9 is survived by a restart, as its supervisor would do it: it resumes
from its local store and checkpoint (docs/streams.md)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from brokerd import protocol as p
from runtime.client import Producer
from runtime.dlq import read_all
from runtime.routing import Router
from runtime.streams import query
from tests.cluster.client import create_in_sync, metadata, start_member, wait_in_sync
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import ROOT, BrokerProcess, python_env, stop_process, wait_for
from tests.streams.harness import write_script

PARTITIONS = 3
CHUNK = 600
PIPELINE = """
app = Pipeline("tally", source="orders")
app.stream.group_by().count("counts").to("counts-out")
run_hosted = app.run_hosted
"""


class StreamsWorker:
    """The pipeline's worker process, started again whenever it exited (as ``rail up``
    would), each life's log kept."""

    def __init__(self, folder: Path, script: Path, bootstrap: str) -> None:
        self.folder, self.script, self.bootstrap = folder, script, bootstrap
        self.lives = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def ensure_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.lives += 1
        with open(self.folder / f"worker-{self.lives}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runtime.worker", str(self.script), "--broker",
                 self.bootstrap, "--group", "unused", "--topics", "unused", "--name", "tally",
                 "--member-id", "tally-0", "--session-timeout-ms", "6000"],
                cwd=ROOT, env={**python_env(), "RAIL_STREAMS_DIR": str(self.folder / "state")},
                stdout=subprocess.DEVNULL, stderr=log)

    def log(self) -> str:
        return (self.folder / f"worker-{self.lives}.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)


def _stop(router: Router, worker: StreamsWorker, brokers: list[BrokerProcess]) -> None:
    router.close()
    try:
        worker.stop()
    finally:
        for b in brokers:
            b.stop()


def assert_exact(router: Router, items: list[tuple[str, Any]]) -> None:
    """The counting app's table and output topic equal the reference for ``items``."""
    expected = Counter(key for key, _ in items)
    time.sleep(1.0)  # a late duplicate would show by now
    assert dict(query.decoded(query.table(router, "tally", "counts"))) == dict(expected)
    # the output topic: every key's counts 1..n, each once and in order
    by_key: dict[str, list[int]] = defaultdict(list)
    for event in read_all(router, "counts-out"):
        by_key[event.key].append(event.value)
    assert by_key == {k: list(range(1, n + 1)) for k, n in expected.items()}


def leaders(api: str, topics: list[str]) -> Counter[int]:
    """How many partitions of ``topics`` each broker leads."""
    count: Counter[int] = Counter()
    for topic in topics:
        meta = metadata(api, topic) or {"topics": []}
        for info in meta["topics"][0]["partitions"] if meta["topics"] else []:
            if info["leader"] >= 0:
                count[info["leader"]] += 1
    return count


def test_a_streams_app_on_a_cluster_is_exact_through_a_leaders_and_its_own_kill_9(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    apis = [b.api for b in brokers]
    every = ",".join(apis)
    worker = StreamsWorker(tmp_path, write_script(tmp_path, PIPELINE), every)
    router = Router(every, timeout_s=5.0)
    items = [(f"k{i % 17}", {"n": i}) for i in range(3 * CHUNK)]
    try:
        create_in_sync(apis, "orders", PARTITIONS, config={"min_insync_replicas": 2})
        worker.ensure_running()
        wait_for(lambda: "running as" in worker.log(), 30, 0.1, "the pipeline to run")
        topics = ["orders", "tally.changelog", "counts-out"]

        def send(chunk: list[tuple[str, Any]]) -> None:
            with Producer(every, acks="all") as producer:
                for key, value in chunk:
                    producer.send("orders", value, key=key)
                producer.flush(timeout_s=60)
                assert not producer.errors, producer.errors

        def progressed(count: int) -> bool:
            worker.ensure_running()
            try:
                counts = dict(query.decoded(query.table(router, "tally", "counts")))
            except Exception:  # noqa: BLE001 - a changelog not there yet, a leader moving
                return False
            return sum(counts.values()) >= count

        send(items[:CHUNK])
        wait_for(lambda: progressed(CHUNK // 2), 60, 0.2, "half the first chunk counted")
        busiest = leaders(apis[0], topics).most_common(1)[0][0]
        brokers[busiest].kill9()  # mid-stream: the second chunk goes to the new leaders
        send(items[CHUNK:2 * CHUNK])
        wait_for(lambda: progressed(CHUNK + CHUNK // 2), 90, 0.2,
                 "counting to go on on the new leaders")
        assert worker.lives == 1, f"the leader's kill stopped the worker: {worker.log()}"
        assert worker.proc is not None
        worker.proc.kill()  # kill -9 of the streams worker itself, mid-stream
        worker.proc.wait(10)
        send(items[2 * CHUNK:])
        wait_for(lambda: progressed(len(items)), 90, 0.2, "every order counted")

        assert_exact(router, items)
        assert worker.lives == 2  # the kill -9; the leader's failover was ridden in place
        described = router.call(p.DescribeGroup(group="tally"))
        assert {m.member_id for m in described.members} <= {"tally-0"}
    finally:
        _stop(router, worker, brokers)


RELAY = """
app = Pipeline("relay", source="src")
app.stream.key_by(lambda v: f"o{v['n']}").to("copies")
run_hosted = app.run_hosted
"""


def test_a_streams_worker_rides_out_the_kill_of_its_outputs_leader_in_place(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """Every task of a re-keying pipeline writes to every partition of its output, so the
    kill -9 of the leader of one of them stalls sends from all of them while inputs keep
    coming from the live leaders.  The worker is not restarted: what the dead leader did
    not answer goes again to the new leader once metadata names it (the same producer ids
    and sequences), and every input is in the output exactly once.  The worker is given
    one endpoint, a broker that lives (with one endpoint its sends all went to that broker,
    and the first NOT_LEADER stopped it)."""
    brokers = start_three(tmp_path, zookeeper)
    apis = [b.api for b in brokers]
    every = ",".join(apis)
    worker = StreamsWorker(tmp_path, write_script(tmp_path, RELAY, "relay.py"), every)
    router = Router(every, timeout_s=5.0)
    total = 3000
    try:
        for topic in ("src", "copies"):
            create_in_sync(apis, topic, PARTITIONS, config={"min_insync_replicas": 2})
        victim = metadata(apis[0], "copies")["topics"][0]["partitions"][0]["leader"]
        worker.bootstrap = apis[(victim + 1) % len(apis)]
        worker.ensure_running()
        wait_for(lambda: "running as" in worker.log(), 30, 0.1, "the pipeline to run")

        def copied() -> int:
            try:
                meta = router.call(p.Metadata(topics=["copies"]))
            except Exception:  # noqa: BLE001 - a leader moving
                return 0
            return sum(part.end_offset for part in meta.topics[0].partitions)

        with Producer(every, acks="all") as producer:
            for i in range(total):
                producer.send("src", {"n": i}, key=f"k{i}")
                if i == total // 3:
                    producer.flush(timeout_s=60)
                    wait_for(lambda: copied() >= total // 4, 30, 0.05, "copies before the kill")
                    brokers[victim].kill9()
                if i % 100 == 0:
                    time.sleep(0.02)  # a stream, not one burst
            producer.flush(timeout_s=90)
            assert not producer.errors, producer.errors[:3]
        wait_for(lambda: copied() >= total, 120, 0.2, "every input copied")
        time.sleep(1.0)  # a late duplicate would show by now
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        assert worker.lives == 1
        values = Counter(e.value["n"] for e in read_all(router, "copies"))
        assert values == Counter(range(total)), sorted((values - Counter(range(total))).items())[:5]
    finally:
        _stop(router, worker, brokers)


def test_a_streams_app_rides_out_a_rolling_restart_exactly_without_stalling(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """Each broker stopped (SIGTERM) and started again in turn, a chunk of orders sent
    after each stop: the worker counts each chunk within seconds of the stop, in place (one
    life), and the table and the output topic equal the reference.  Each stop used to cost
    10.5 s: the worker's sends out at the stopped leader waited their whole timeout."""
    brokers = start_three(tmp_path, zookeeper)
    ports = [int(b.api.rsplit(":", 1)[1]) for b in brokers]
    apis = [b.api for b in brokers]
    every = ",".join(apis)
    worker = StreamsWorker(tmp_path, write_script(tmp_path, PIPELINE), every)
    router = Router(every, timeout_s=5.0)
    chunk = 400
    items = [(f"k{i % 17}", {"n": i}) for i in range(4 * chunk)]
    try:
        create_in_sync(apis, "orders", PARTITIONS, config={"min_insync_replicas": 2})
        worker.ensure_running()
        wait_for(lambda: "running as" in worker.log(), 30, 0.1, "the pipeline to run")

        def counted() -> int:
            try:
                return sum(dict(query.decoded(query.table(router, "tally", "counts"))).values())
            except Exception:  # noqa: BLE001 - a changelog not there yet, a leader moving
                return 0

        with Producer(every, acks="all") as producer:
            for i in range(4):
                if i:
                    stopped = time.monotonic()
                    assert brokers[i - 1].stop() == 0
                for key, value in items[i * chunk:(i + 1) * chunk]:
                    producer.send("orders", value, key=key)
                producer.flush(timeout_s=60)
                assert not producer.errors, producer.errors
                wait_for(lambda: counted() >= (i + 1) * chunk, 90, 0.1, f"chunk {i} counted")
                if i:
                    took = time.monotonic() - stopped
                    assert took < 5.0, f"chunk {i} took {took:.1f} s after broker {i - 1}'s stop"
                    brokers[i - 1] = start_member(tmp_path, zookeeper, i - 1,
                                                  api_port=ports[i - 1])
                    wait_in_sync(apis, "orders", PARTITIONS, 3, timeout=60)
        assert_exact(router, items)
        assert worker.lives == 1, f"a stop stopped the worker: {worker.log()}"
    finally:
        _stop(router, worker, brokers)
