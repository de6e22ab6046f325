"""The Python Producer in a cluster: given several bootstrap endpoints it sends each
partition's batches to its leader, and after a kill -9 of a leader it follows the new one
with the same producer id and sequences: every acknowledged record is in every replica
once, and every record sent is acknowledged."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.client import BrokerError, Producer
from runtime.connection import Connection
from runtime.routing import connect
from tests.cluster.client import check_replicas, start_member, wait_in_sync
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import start_broker, wait_for
from tests.integration.wire import RawClient

PARTITIONS = 4


def test_a_producer_follows_the_leaders_through_a_kill_9_and_loses_nothing(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    ports = [int(b.api.rsplit(":", 1)[1]) for b in brokers]
    acked: list[tuple[int, int, Any]] = []
    failed: list[BrokerError] = []
    producer: Producer | None = None
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[1]) as raw:
            raw.ok("create_topic", topic="t", partitions=PARTITIONS)
        leaders = wait_in_sync(apis, "t", PARTITIONS, 3)
        # The bootstrap list starts with a broker that leads partition 0 or not: either way
        # the producer must learn every leader from metadata.
        producer = Producer(",".join(apis), acks="all", request_timeout_s=30)
        sent = 0
        stop = threading.Event()

        def send_steadily() -> None:
            nonlocal sent
            while not stop.is_set() and sent < 3000:
                value = f"v{sent}"

                def done(partition: int, offset: int, error: BrokerError | None,
                         value: str = value) -> None:
                    if error is None:
                        acked.append((partition, offset, value))
                    else:
                        failed.append(error)
                producer.send("t", value, key=f"k{sent % 101}", callback=done)
                sent += 1
                if sent % 50 == 0:
                    threading.Event().wait(0.01)  # a steady stream, not one burst

        sender = threading.Thread(target=send_steadily, daemon=True)
        sender.start()
        wait_for(lambda: len(acked) >= 600, 60, what="600 acks before the kill")
        victim = leaders[0]
        brokers[victim].kill9()
        sender.join(120)
        assert not sender.is_alive()
        producer.flush(timeout_s=90)
        assert not failed and not producer.errors, (failed + producer.errors)[:3]
        assert len(acked) == sent == 3000
        assert producer._cl.leaders[("t", 0)] not in (None, apis[victim]), "it never moved on"
        brokers[victim] = start_member(tmp_path, zookeeper, victim, api_port=ports[victim])
        wait_in_sync([b.api for b in brokers], "t", PARTITIONS, 3, timeout=60)
    finally:
        if producer is not None:
            with contextlib.suppress(BrokerError):  # a failed run must still stop the brokers
                producer.close(timeout_s=1)
        for b in brokers:
            b.stop()
    logs = check_replicas(brokers, "t", PARTITIONS, acked)
    for partition, records in logs["0"].items():  # one producer: each partition in send order
        sent_order = [int(msgspec.msgpack.decode(r)[0][1:]) for _, r in records]
        assert sent_order == sorted(sent_order), f"partition {partition} is out of send order"


def test_a_producer_sends_to_topics_it_creates_on_a_cluster(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """A send to a topic that does not exist creates it (as on a single broker); in a
    cluster the brokers learn of it from ZooKeeper a moment later: the producer waits for
    its leaders instead of taking the first broker's NOT_LEADER as final (it once did)."""
    brokers = start_three(tmp_path, zookeeper)
    try:
        topics = [f"new-{i}" for i in range(6)]
        # each broker first in the list for two of the topics: the first one is asked to
        # create the topic and, while it knows no cluster yet, gets the first sends
        for n, topic in enumerate(topics):
            first = brokers[n % 3].api
            every = ",".join([first] + [b.api for b in brokers if b.api != first])
            with Producer(every, acks="all") as producer:
                for i in range(10):
                    producer.send(topic, i)
                producer.flush(timeout_s=60)
                assert not producer.errors, (topic, producer.errors[:3])
        for topic in topics:
            with RawClient(brokers[0].api) as raw:
                meta = raw.ok("metadata", topics=[topic])
            assert sum(x["end_offset"] for x in meta["topics"][0]["partitions"]) == 10
    finally:
        for b in brokers:
            b.stop()


def test_a_producer_creates_topics_through_the_live_brokers_when_the_first_endpoint_is_dead(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The first endpoint of the list killed with kill -9: a send to a topic that does not
    exist yet creates it through another broker at once (it once went to the first
    endpoint only: 10 s, then UNAVAILABLE; a Connect sink's first dead letter after its
    coordinator's kill stopped the task so)."""
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        brokers[0].kill9()

        def registered() -> list[int]:
            with RawClient(apis[1]) as raw:
                return [b["id"] for b in raw.ok("metadata", topics=[])["brokers"]]
        # (until its session ends the dead broker may be given the new topic's partitions)
        wait_for(lambda: registered() == [1, 2], 30, 0.1, "broker 0's registration to end")
        started = time.monotonic()
        with Producer(",".join(apis), request_timeout_s=10) as producer:
            for i in range(10):
                producer.send("after-kill", i, key=str(i))
            producer.flush(timeout_s=60)
            assert not producer.errors, producer.errors[:3]
        assert time.monotonic() - started < 5, "it waited out the dead endpoint"
        with RawClient(apis[1]) as raw:
            meta = raw.ok("metadata", topics=["after-kill"])
            again = raw.ok("create_topic", topic="after-kill", exist_ok=True)
        assert sum(x["end_offset"] for x in meta["topics"][0]["partitions"]) == 10
        # an existing topic's real partition count, as on a single broker (it was 0, and the
        # producer, creating a topic another broker had just created, drew from range(0))
        assert again["created"] is False
        assert again["partitions"] == len(meta["topics"][0]["partitions"])
    finally:
        for b in brokers:
            b.stop()


def test_the_producer_sends_with_acks_all_on_a_cluster_and_1_on_a_single_broker(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """Unless told otherwise a Producer sends with acks="all" on a cluster (with acks=1 a
    batch only a killed leader had is lost: Connect's file source lost lines so) and with
    acks=1 on a single broker.  Shown by what the broker does, not only the attribute:
    with a follower of the partition paused, the send is not acknowledged until it
    continues (acks=1 is answered after the leader's append).  Given one endpoint (the
    leader, or another broker) and sending to an explicit partition, the producer still
    learns it is a cluster, and where the leader is, before the batch leaves."""
    single = start_broker(tmp_path / "single")
    brokers = start_three(tmp_path, zookeeper)
    try:
        with Producer(single.api, linger_ms=0) as producer:
            producer.send("s", "x", partition=0)
            producer.send("s", "y", key="k")
            producer.flush(timeout_s=10)
            assert producer.acks == 1
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="d", partitions=1)
        leader = wait_in_sync(apis, "d", 1, 3)[0]
        follower = brokers[(leader + 1) % 3]
        for n, bootstrap in enumerate((apis[leader], apis[(leader + 2) % 3], ",".join(apis))):
            with Producer(bootstrap, linger_ms=0) as producer:
                assert producer.acks == ("all" if n == 2 else 1), "before it read metadata"
                os.kill(follower.pid, signal.SIGSTOP)
                try:
                    if n == 2:
                        producer.send("d", f"keyed-{n}", key="k")
                    else:
                        producer.send("d", f"explicit-{n}", partition=0)
                    assert producer.acks == "all", bootstrap
                    with contextlib.suppress(BrokerError):
                        producer.flush(timeout_s=1.0)
                    assert producer._in_flight, f"acknowledged without the paused follower: {n}"
                finally:
                    os.kill(follower.pid, signal.SIGCONT)
                producer.flush(timeout_s=30)
                assert not producer.errors, producer.errors[:3]
        with Producer(apis[leader], linger_ms=0) as producer:
            producer.acks = 1  # set by its user: kept, not learned
            producer.send("d", "set", partition=0)
            producer.flush(timeout_s=30)
            assert producer.acks == 1
        with RawClient(apis[leader]) as raw:
            meta = raw.ok("metadata", topics=["d"])
        assert meta["topics"][0]["partitions"][0]["end_offset"] == 4
    finally:
        single.stop()
        for b in brokers:
            b.stop()


def test_a_topic_created_through_an_endpoint_list_is_known_to_every_broker_at_once(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """``create_topic`` through a Router is answered once every live broker names a leader
    for each partition: a Connect task that created ``_connect-offsets`` and read it at once
    through another broker was told UNKNOWN_TOPIC and stopped (it once did, in CI)."""
    brokers = start_three(tmp_path, zookeeper)
    try:
        conn = connect(",".join(b.api for b in brokers))
        each = [Connection(b.api) for b in brokers]  # open already: asked at once
        try:
            for c in each:
                c.call(p.Metadata(topics=[]))
            for i in range(20):
                conn.call(p.CreateTopic(topic=f"made-{i}", partitions=3))
                for c in each:
                    try:
                        parts = c.call(p.Metadata(topics=[f"made-{i}"])).topics[0].partitions
                    except BrokerError as exc:
                        raise AssertionError(f"made-{i} at {c.endpoint}: {exc}") from exc
                    assert min(x.leader for x in parts) >= 0, (i, c.endpoint, parts)
        finally:
            conn.close()
            for c in each:
                c.close()
    finally:
        for b in brokers:
            b.stop()


def test_metadata_through_an_endpoint_list_does_not_wait_out_a_killed_leader(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The Router takes each partition's offsets from its leader; a leader killed is still
    named as such until the controller moves its partitions, and asking it once took the
    whole timeout (10 s) on every such call: a Connect source, which looks at metadata
    after each batch, stood still that long.  Now one call waits 3 s at most for it, and
    the next ones skip it (its port refuses) until a new leader is named."""
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="m", partitions=1)
        leader = wait_in_sync(apis, "m", 1, 3)[0]
        conn = connect(",".join(apis), timeout_s=10.0)
        try:
            conn.call(p.Metadata(topics=None))  # a connection to the leader, as in use
            brokers[leader].kill9()
            took = []
            for _ in range(3):
                started = time.monotonic()
                conn.call(p.Metadata(topics=None))
                took.append(time.monotonic() - started)
            assert took[0] < 5.0 and max(took[1:]) < 1.0, took
        finally:
            conn.close()
    finally:
        for b in brokers:
            b.stop()


def test_a_topic_created_through_an_endpoint_list_right_after_a_kill_is_answered_at_once(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """A broker killed is still registered until its ZooKeeper session expires; the
    Router's wait for every broker to know a new topic skips it (its port refuses) rather
    than waiting out its timeout."""
    brokers = start_three(tmp_path, zookeeper)
    try:
        conn = connect(",".join(b.api for b in brokers), timeout_s=10.0)
        try:
            conn.call(p.CreateTopic(topic="before", partitions=1))
            brokers[2].kill9()
            started = time.monotonic()
            conn.call(p.CreateTopic(topic="after", partitions=1))
            took = time.monotonic() - started
            assert took < 3.0, took
        finally:
            conn.close()
    finally:
        for b in brokers:
            b.stop()


def test_a_router_call_out_at_a_leader_that_stops_goes_to_the_new_one_at_once(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    """The Router (``rail``, the supervisor, a streams worker's sender) with a produce out
    at the leader when it is stopped (SIGTERM): the call goes on to the new leader within a
    second, and the idempotent retry stores the record once.  It used to wait its whole
    timeout (10 s) for a reply the stopped broker could not send, and then raise
    UNAVAILABLE with no time left to try the new leader."""
    brokers = start_three(tmp_path, zookeeper)
    apis = [b.api for b in brokers]
    acked: list[tuple[int, int, Any]] = []
    slowest = [0.0]
    errors: list[BaseException] = []
    stop = threading.Event()
    router = None
    try:
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=1)
        leader = wait_in_sync(apis, "t", 1, 3)[0]
        router = connect(",".join(apis), timeout_s=10)

        def produce() -> None:
            sequence = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    reply = router.call(p.Produce(
                        topic="t", partition=0, acks="all", producer_id=21, sequence=sequence,
                        records=msgspec.Raw(msgspec.msgpack.encode([[f"v{sequence}"]]))))
                except BrokerError as exc:
                    errors.append(exc)
                    return
                slowest[0] = max(slowest[0], time.monotonic() - started)
                acked.append((0, reply.offsets[0][1], f"v{sequence}"))
                sequence += 1

        sender = threading.Thread(target=produce, daemon=True)
        sender.start()
        wait_for(lambda: len(acked) >= 200, 30, what="200 acks before the stop")
        assert brokers[leader].stop() == 0
        at = len(acked)
        wait_for(lambda: len(acked) >= at + 200 or errors, 30, what="200 more acks")
        stop.set()
        sender.join(30)
        assert not errors, errors
        assert slowest[0] < 2.0, f"a call took {slowest[0]:.1f} s through the leader's stop"
        brokers[leader] = start_member(tmp_path, zookeeper, leader,
                                       api_port=int(apis[leader].rsplit(":", 1)[1]))
        wait_in_sync(apis, "t", 1, 3, timeout=60)
    finally:
        stop.set()
        if router is not None:
            router.close()
        for b in brokers:
            b.stop()
    check_replicas(brokers, "t", 1, acked)
