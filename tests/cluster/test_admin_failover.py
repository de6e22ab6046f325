"""Administration through failures, the cases docs/cluster.md listed as untested:

- ``delete_records`` through a leader's failover: the leader deleted its prefix and waits
  for every in-sync replica's start offset to move, one follower is paused (SIGSTOP) so
  the wait lasts, and the leader is killed with kill -9 in the middle of it.  The client
  asks the next leader again; once everyone is back every replica starts at the asked
  offset, and every acknowledged record above it is still there, once, in identical
  copies.
- ``delete_topic`` with the controller killed in the middle: it saw the deletion and waits
  for a paused replica; the next controller completes it, every copy of the old topic is
  deleted (the killed controller's when it returns), the name can be created again and
  holds only new records, and another topic loses nothing."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import msgspec
import zmq

from brokerd.cluster.topic_id import read_topic_id
from tests.cluster.client import (
    LeaderProducer,
    check_replicas,
    metadata,
    read_log,
    start_member,
    wait_in_sync,
)
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import BrokerProcess, wait_for
from tests.integration.wire import RawClient

DELETE_TO = 12


def start_offsets(apis: list[str]) -> list[int]:
    out = []
    for api in apis:
        with RawClient(api) as raw:
            out.append(raw.ok("list_offsets", topic="d", partition=0, timestamp=-2)["offset"])
    return out


def delete_at_the_leader(apis: list[str]) -> bool:
    """``delete_records`` at whichever broker takes it (each other answers NOT_LEADER, or
    nothing while it is paused or dead)."""
    for api in apis:
        with RawClient(api) as raw:
            try:
                reply = raw.call("delete_records", timeout_s=2.0, topic="d", partition=0,
                                 offset=DELETE_TO)
            except AssertionError:  # no answer in time
                continue
        if reply["op"] == "delete_records":
            assert reply["start_offset"] == DELETE_TO, reply
            return True
        assert reply["code"] in ("NOT_LEADER", "TIMEOUT"), reply
    return False


def test_a_leader_killed_while_delete_records_waits_leaves_every_replica_consistent(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers: list[BrokerProcess] = []
    paused: BrokerProcess | None = None
    try:
        for i in range(3):
            brokers.append(start_member(tmp_path, zookeeper, i))
        apis = [b.api for b in brokers]
        ports = [int(api.rsplit(":", 1)[1]) for api in apis]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="d", partitions=1)
        leader = wait_in_sync(apis, "d", 1, 3)[0]
        producer = LeaderProducer(apis, "d", producer_id=5)
        for i in range(30):
            producer.send(0, [i])
        acked = list(producer.acked)
        stopped, other = (i for i in range(3) if i != leader)

        os.kill(brokers[stopped].pid, signal.SIGSTOP)
        paused = brokers[stopped]
        context = zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(apis[leader])
            sock.send(msgspec.msgpack.encode({"op": "delete_records", "id": 1, "topic": "d",
                                              "partition": 0, "offset": DELETE_TO}))
            # it waits for the paused follower's start offset, which cannot move
            assert not sock.poll(1000), msgspec.msgpack.decode(sock.recv())
            with RawClient(apis[other]) as raw:  # the running follower's already moved
                wait_for(lambda: raw.ok("list_offsets", topic="d", partition=0,
                                        timestamp=-2)["offset"] == DELETE_TO, 10,
                         what="the running follower's start offset")
            brokers[leader].kill9()
        finally:
            sock.close()

        # The next leader (the running follower, or the paused one until its session
        # ends) takes the same request again and answers once its ISR moved.
        live = [apis[other], apis[stopped]]
        wait_for(lambda: delete_at_the_leader(live), 40, 0.2,
                 what="delete_records answered by the next leader")
        os.kill(brokers[stopped].pid, signal.SIGCONT)
        paused = None
        brokers[leader] = start_member(tmp_path, zookeeper, leader, api_port=ports[leader])
        wait_in_sync(apis, "d", 1, 3, timeout=60)
        wait_for(lambda: start_offsets(apis) == [DELETE_TO] * 3, 20, 0.2,
                 what="every replica starting at the deleted offset")
        producer.close()
        producer = LeaderProducer(apis, "d", producer_id=5)
        producer.sequences[0] = 30
        for i in range(30, 40):
            producer.send(0, [i])
        acked += producer.acked
        producer.close()
        wait_in_sync(apis, "d", 1, 3)
    finally:
        if paused is not None:
            os.kill(paused.pid, signal.SIGCONT)
        for b in brokers:
            b.stop()
    copies = [read_log(b.data_dir, "d", 0) for b in brokers]
    assert copies[0] == copies[1] == copies[2]
    assert [o for o, _ in copies[0]] == list(range(DELETE_TO, 40))
    stored = {o: msgspec.msgpack.decode(r)[0] for o, r in copies[0]}
    for _, offset, value in acked:  # each acknowledged record above the start, in place
        if offset >= DELETE_TO:
            assert stored[offset] == value, (offset, value)
    assert len(acked) == 40


def test_the_controller_killed_while_a_deletion_waits_leaves_it_to_the_next(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    ports = [int(b.api.rsplit(":", 1)[1]) for b in brokers]
    apis = [b.api for b in brokers]
    paused: BrokerProcess | None = None
    acked: list[tuple[int, int, object]] = []
    try:
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="x", partitions=2)
            raw.ok("create_topic", topic="keep", partitions=2)
        wait_in_sync(apis, "x", 2, 3)
        wait_in_sync(apis, "keep", 2, 3)
        for topic, acks in (("x", "all"), ("keep", "all")):
            producer = LeaderProducer(apis, topic, producer_id=7, acks=acks)
            for i in range(20):
                producer.send(i % 2, [f"old-{i}"])
            producer.close()
            if topic == "keep":
                acked += producer.acked
        controller = metadata(apis[0], "x")["controller"]  # type: ignore[index]
        replica, other = (i for i in range(3) if i != controller)
        old_id = read_topic_id(brokers[replica].data_dir / "topics" / "x" / "0")

        os.kill(brokers[replica].pid, signal.SIGSTOP)
        paused = brokers[replica]
        with RawClient(apis[other]) as raw:
            raw.ok("delete_topic", topic="x")
            # marked, and waiting for the paused replica: the name is still taken
            assert raw.error_code("create_topic", topic="x", partitions=1) == "TOPIC_EXISTS"
        wait_for(lambda: "topic x waits for brokers" in brokers[controller].log(), 10,
                 what="the controller waiting for the paused replica to delete its copy")
        brokers[controller].kill9()
        os.kill(brokers[replica].pid, signal.SIGCONT)
        paused = None

        live = [apis[other], apis[replica]]
        with RawClient(apis[other]) as raw:
            wait_for(lambda: raw.call("create_topic", topic="x", partitions=1,
                                      config={"replication_factor": 2})["op"]
                     == "create_topic", 40, 0.2, what="the deletion completed, x created again")
        wait_in_sync(live, "x", 1, 2)
        new = LeaderProducer(live, "x", producer_id=8)
        for i in range(5):
            new.send(0, [f"new-{i}"])
        new.close()
        brokers[controller] = start_member(tmp_path, zookeeper, controller,
                                           api_port=ports[controller])
        wait_in_sync(apis, "keep", 2, 3, timeout=60)
        for b in brokers:  # no copy of the old x anywhere: gone, or the new one's
            for part in (0, 1):
                folder = b.data_dir / "topics" / "x" / str(part)
                wait_for(lambda folder=folder: not folder.exists()
                         or read_topic_id(folder) != old_id, 10, 0.1,
                         what=f"the old copy {folder} deleted")
    finally:
        if paused is not None:
            os.kill(paused.pid, signal.SIGCONT)
        for b in brokers:
            b.stop()
    check_replicas(brokers, "keep", 2, acked)
    for b in brokers:
        values = [msgspec.msgpack.decode(r)[0] for _, r in read_log(b.data_dir, "x", 0)]
        assert not any(str(v).startswith("old") for v in values), values
        assert values in ([], [f"new-{i}" for i in range(5)]), values
