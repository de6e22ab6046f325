"""The Python Consumer in a cluster: membership and commits at the group's coordinator, data
from each partition's leader.  Under kill -9 of the coordinator and then of a data leader
while a keyed stream is produced and consumed, the whole history holds: every acknowledged
record is consumed (at least once, with the value stored at its offset), no partition skips
an offset, and the offsets the group acknowledged never go backwards."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from brokerd import protocol as p
from runtime.client import BrokerError, Consumer, Producer
from runtime.cluster_consumer import ClusterConsumer
from runtime.connection import Connection
from tests.cluster.client import Stream, start_member, wait_in_sync
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import wait_for, written_lines
from tests.integration.test_worker import Workers
from tests.integration.wire import RawClient

PARTITIONS = 4
GROUP = "kitchen"


def coordinator_of(apis: list[str], group: str) -> int:
    for api in apis:
        with contextlib.suppress(BrokerError):
            conn = Connection(api, timeout_s=2)
            try:
                return int(conn.call(p.FindCoordinator(group=group)).coordinator)
            finally:
                conn.close()
    raise AssertionError("no broker names a coordinator")


class Reader:
    """A group member polling in a thread, committing (sync) after every batch; it keeps
    every event it got and every offset the coordinator acknowledged, in order."""

    def __init__(self, bootstrap: str, group: str = GROUP, timeout_s: float = 20) -> None:
        self.consumer = Consumer(bootstrap, group=group, topics=["t"], session_timeout_ms=6000,
                                 timeout_s=timeout_s)
        self.seen: dict[int, list[tuple[int, Any]]] = defaultdict(list)
        self.acked: dict[int, list[int]] = defaultdict(list)  # committed, as acknowledged
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                events = self.consumer.poll(0.2)
                for e in events:
                    self.seen[e.partition].append((e.offset, e.value))
                if events:
                    self.consumer.commit(sync=True)
                for (_, part), offset in self.consumer.committed.items():
                    if not self.acked[part] or self.acked[part][-1] != offset:
                        self.acked[part].append(offset)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def has(self, wanted: dict[int, int]) -> bool:
        """Every partition committed up to ``wanted``."""
        return all(self.acked[part] and self.acked[part][-1] >= end
                   for part, end in wanted.items())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        with contextlib.suppress(BrokerError):
            self.consumer.close()


def test_a_group_consumes_from_the_leaders_and_commits_at_the_coordinator(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    readers: list[Reader] = []
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=PARTITIONS)
        wait_in_sync(apis, "t", PARTITIONS, 3)
        with Producer(",".join(apis), acks="all") as producer:
            for i in range(2000):
                producer.send("t", i, key=f"k{i % 37}")
        # One endpoint of the cluster is enough: the consumer finds the rest.
        readers = [Reader(apis[2]), Reader(",".join(apis))]
        assert all(isinstance(r.consumer, ClusterConsumer) for r in readers)
        def distinct() -> int:
            return len({(q, o) for r in readers for q in range(PARTITIONS) for o, _ in r.seen[q]})
        wait_for(lambda: distinct() >= 2000 and all(r.consumer.assignment for r in readers), 60,
                 what="2,000 events between two members")
        ends = {}
        for part in range(PARTITIONS):
            got = sorted({o for r in readers for o, _ in r.seen[part]})
            assert got == list(range(len(got))), f"partition {part} skipped an offset"
            ends[part] = len(got)
        assert sum(ends.values()) == 2000
        wait_for(lambda: all(r.has({q: ends[q] for _, q in r.consumer.assignment})
                             for r in readers), 30, what="every partition committed")
        owned = [set(r.consumer.assignment) for r in readers]
        assert owned[0] and owned[1] and not owned[0] & owned[1]
        assert not any(r.errors for r in readers), [r.errors for r in readers]
        # A member's partitions move when it leaves: the other one takes them from the
        # committed offsets and reads nothing again.
        before = {q: len(readers[0].seen[q]) for q in range(PARTITIONS)}
        readers[1].close()
        wait_for(lambda: len(readers[0].consumer.assignment) == PARTITIONS, 30,
                 what="the partitions of the member that left")
        with Producer(",".join(apis), acks="all") as producer:
            for i in range(2000, 2100):
                producer.send("t", i, key=f"k{i % 37}")
        wait_for(lambda: sum(len(readers[0].seen[q]) - before[q] for q in range(PARTITIONS))
                 >= 100, 30, what="the next 100 events")
        time.sleep(0.5)
        assert sum(len(readers[0].seen[q]) - before[q] for q in range(PARTITIONS)) == 100
    finally:
        try:
            for r in readers:
                r.close()
        finally:  # the brokers stop whatever closing the readers did
            for b in brokers:
                b.stop()


def test_kill_9_of_the_coordinator_then_of_a_leader_loses_nothing_and_never_goes_back(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    ports = [int(b.api.rsplit(":", 1)[1]) for b in brokers]
    reader: Reader | None = None
    stream: Stream | None = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=PARTITIONS)
        leaders = wait_in_sync(apis, "t", PARTITIONS, 3)
        stream = Stream(apis, request_timeout_s=30)
        reader = Reader(",".join(apis))
        wait_for(lambda: sum(map(len, reader.seen.values())) >= 500, 60,
                 what="500 events before the first kill")

        # 1. The coordinator: the member finds the new one, rejoins and goes on.
        victim = coordinator_of(apis, GROUP)
        brokers[victim].kill9()
        at = sum(map(len, reader.seen.values()))
        wait_for(lambda: sum(map(len, reader.seen.values())) >= at + 500
                 and coordinator_of([a for i, a in enumerate(apis) if i != victim], GROUP)
                 not in (victim, -1), 90, what="500 more events under a new coordinator")
        assert reader.consumer.conn.endpoint != apis[victim], "it never moved on"
        brokers[victim] = start_member(tmp_path, zookeeper, victim, api_port=ports[victim])
        leaders = wait_in_sync(apis, "t", PARTITIONS, 3, timeout=60)

        # 2. A data leader that is not the coordinator now.
        coordinator = coordinator_of(apis, GROUP)
        victim = next(leader for leader in leaders.values() if leader != coordinator)
        brokers[victim].kill9()
        at = sum(map(len, reader.seen.values()))
        moved = [part for part, leader in leaders.items() if leader == victim]
        wait_for(lambda: sum(map(len, reader.seen.values())) >= at + 500
                 and all(reader.consumer._leaders.get(("t", q)) not in (None, apis[victim])
                         for q in moved), 90, what="500 more events from the new leaders")
        stream.finish()
        ends = stream.ends()
        wait_for(lambda: reader.has(ends), 90, what="the group to commit every record")
        assert not reader.errors, reader.errors
        # Nothing acknowledged lost, each with the value stored at its offset.
        stored = {(part, offset): v for part, offset, v in stream.records()}
        got = {(part, offset): v for part, rows in reader.seen.items() for offset, v in rows}
        assert not set(stored) - set(got), sorted(set(stored) - set(got))[:5]
        assert all(got[k] == v for k, v in stored.items())
        for part, rows in reader.seen.items():
            # No offset skipped: each event follows the one before or goes back (a rejoin).
            for (before, _), (after, _) in zip(rows, rows[1:], strict=False):
                assert after <= before + 1, f"partition {part} skipped {before + 1}..{after - 1}"
            # What the coordinator acknowledged never goes backwards.
            assert reader.acked[part] == sorted(reader.acked[part]), reader.acked[part]
    finally:
        if stream is not None:
            stream.close()
        try:
            if reader is not None:
                reader.close()
        finally:  # the brokers stop whatever closing the reader did
            for b in brokers:
                b.stop()


RECORD = """
import os
FD = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
def handle(event, ctx):
    os.write(FD, f"{event.partition} {event.offset} {event.value}\\n".encode())
"""


def test_worker_hosts_run_on_a_cluster_through_a_leader_kill_9(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The worker host, unchanged, given the cluster's endpoints: two replicas share the
    partitions, a leader is killed, every acknowledged event is handled and committed."""
    brokers = start_three(tmp_path, zookeeper)
    out = tmp_path / "out.txt"
    workers: Workers | None = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=PARTITIONS)
        leaders = wait_in_sync(apis, "t", PARTITIONS, 3)
        workers = Workers(SimpleNamespace(api=",".join(apis)), tmp_path)  # type: ignore[arg-type]
        script = workers.script(RECORD)
        for _ in range(2):
            workers.start(script, group=GROUP, topics="t", env={"OUT": str(out)})
        produced: list[tuple[int, int, Any]] = []
        with Producer(",".join(apis), acks="all", request_timeout_s=30) as producer:
            def note(part: int, offset: int, error: BrokerError | None, v: int) -> None:
                assert error is None, error
                produced.append((part, offset, v))
            for i in range(3000):
                producer.send("t", i, key=f"k{i % 101}",
                              callback=lambda q, o, e, v=i: note(q, o, e, v))
                if i == 1000:
                    producer.flush()
                    wait_for(lambda: len(written_lines(out)) >= 500, 60, what="500 handled")
                    brokers[leaders[0]].kill9()
                if i % 50 == 0:
                    time.sleep(0.01)
        def handled() -> dict[tuple[int, int], int]:
            return {(int(q), int(o)): int(v)
                    for q, o, v in (line.split() for line in written_lines(out))}
        wait_for(lambda: len(handled()) >= 3000, 90, what="every event handled")
        assert {(q, o): v for q, o, v in produced} == handled()
        ends: dict[int, int] = defaultdict(int)
        for q, o, _ in produced:
            ends[q] = max(ends[q], o + 1)
        live = [a for i, a in enumerate(apis) if i != leaders[0]]

        def committed() -> dict[int, int]:
            conn = Connection(live[0], timeout_s=5)
            try:
                api = conn.call(p.FindCoordinator(group=GROUP)).api
            finally:
                conn.close()
            conn = Connection(api, timeout_s=5)
            try:
                reply = conn.call(p.DescribeGroup(group=GROUP))
            finally:
                conn.close()
            return {gp.partition: gp.committed or 0 for gp in reply.partitions}
        wait_for(lambda: committed() == dict(ends), 60, what="every partition committed")
        assert all(proc.poll() is None for proc in workers.procs), "a worker host died"
    finally:
        try:
            if workers is not None:
                workers.stop_all()
        finally:
            for b in brokers:
                b.stop()
