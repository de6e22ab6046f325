"""Consumer groups in a cluster, the broker side: the coordinator of a group is the leader
of its partition of ``__rail_offsets``; commits are replicated records there.  A real
ZooKeeper, three real brokers, raw clients, kill -9."""

from __future__ import annotations

import os
import signal
import threading
import zlib
from pathlib import Path
from typing import Any

import msgspec
import zmq

from tests.cluster.client import metadata, wait_in_sync
from tests.cluster.test_replication import start_three
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import start_broker, wait_for
from tests.integration.wire import RawClient

GROUP = "pizzeria"
RETRIABLE = {"NOT_COORDINATOR", "COORDINATOR_LOADING"}


def find_coordinator(api: str, group: str = GROUP, exclude: int = -1,
                     timeout: float = 30.0) -> tuple[int, str]:
    """Ask ``api`` until it names a coordinator (other than ``exclude``) that answers."""
    def ask() -> tuple[int, str] | None:
        with RawClient(api) as raw:
            reply = raw.call("find_coordinator", timeout_s=3.0, group=group)
        if reply["op"] == "error":
            assert reply["code"] in RETRIABLE, reply
            return None
        if reply["coordinator"] == exclude:
            return None
        return reply["coordinator"], reply["api"]
    return wait_for(ask, timeout=timeout, interval=0.1, what=f"a coordinator of {group}")


def coordinator_call(api: str, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
    """``op`` at the coordinator, retried while it is not ready yet (retriable codes)."""
    def attempt() -> dict[str, Any] | None:
        with RawClient(api) as raw:
            reply = raw.call(op, timeout_s=5.0, **fields)
        return None if reply.get("code") in RETRIABLE else reply
    return wait_for(attempt, timeout=timeout, interval=0.1, what=f"{op} at {api}")


def committed(api: str) -> dict[int, int]:
    reply = coordinator_call(api, "describe_group", group=GROUP)
    assert reply["op"] == "describe_group", reply
    return {part["partition"]: part["committed"] for part in reply["partitions"]
            if part["topic"] == "t" and part["committed"] is not None}


def test_a_single_broker_names_itself_coordinator(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "one")
    try:
        with RawClient(broker.api) as raw:
            reply = raw.ok("find_coordinator", group=GROUP)
            assert (reply["coordinator"], reply["api"]) == (-1, broker.api)
            raw.ok("join", group=GROUP, topics=["t"])  # the single broker is unchanged
    finally:
        broker.stop()


def test_groups_commit_through_their_coordinator_and_survive_its_kill_9(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=3)
        wait_in_sync(apis, "t", 3, 3)

        # Three brokers asked at once create __rail_offsets once, and agree.
        context = zmq.Context.instance()
        sockets = [context.socket(zmq.DEALER) for _ in apis]
        try:
            for sock, api in zip(sockets, apis):
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(api)
                sock.send(msgspec.msgpack.encode({"op": "find_coordinator", "id": 1,
                                                  "group": GROUP}))
            first = [msgspec.msgpack.decode(s.recv()) if s.poll(10_000) else None
                     for s in sockets]
        finally:
            for sock in sockets:
                sock.close()
        assert all(r is not None and r["op"] in ("find_coordinator", "error") for r in first)
        named = {find_coordinator(api) for api in apis}
        assert len(named) == 1, named
        [(coordinator, coordinator_api)] = named
        assert coordinator_api == apis[coordinator]
        wait_in_sync(apis, "__rail_offsets", 8, 3)
        meta = metadata(apis[0], "__rail_offsets")
        assert meta is not None and len(meta["topics"][0]["partitions"]) == 8
        assert meta["topics"][0]["config"]["cleanup_policy"] == "compact"
        state = meta["topics"][0]["partitions"][zlib.crc32(GROUP.encode()) % 8]
        assert state["leader"] == coordinator

        # A group joined and committed through its coordinator, only there.
        joined = coordinator_call(coordinator_api, "join", group=GROUP, topics=["t"],
                                  session_timeout_ms=30_000)
        assert joined["op"] == "join" and len(joined["assignment"]) == 3, joined
        member, generation = joined["member_id"], joined["generation"]
        other = apis[(coordinator + 1) % 3]
        with RawClient(other) as raw:
            refused = raw.call("commit", group=GROUP, offsets=[["t", 0, 1]],
                               member_id=member, generation=generation)
            assert refused["code"] == "NOT_COORDINATOR", refused
            assert "find_coordinator" in refused["message"]
            assert raw.call("join", group=GROUP, topics=["t"])["code"] == "NOT_COORDINATOR"
        with RawClient(coordinator_api) as raw:
            raw.ok("heartbeat", group=GROUP, member_id=member)
            poll = raw.call("poll", group=GROUP, member_id=member)
            assert poll["code"] == "BAD_REQUEST" and "fetch" in poll["message"]
            stale = raw.call("commit", group=GROUP, offsets=[["t", 0, 1]],
                             member_id="somebody-else", generation=generation)
            assert stale["code"] == "NOT_MEMBER", stale
            assert GROUP in raw.ok("list_groups")["groups"]
            raw.ok("commit", group=GROUP, offsets=[], member_id=member, generation=generation)
        acked: dict[int, int] = {}
        with RawClient(coordinator_api) as raw:
            for i in range(1, 6):
                offsets = [["t", q, i * 10 + q] for q in range(3)]
                raw.ok("commit", group=GROUP, offsets=offsets, member_id=member,
                       generation=generation)
                acked.update({q: o for _, q, o in offsets})
        assert committed(coordinator_api) == acked

        # Commits keep coming while the coordinator is killed with kill -9.
        stop = threading.Event()
        errors: list[str] = []

        def commit_on() -> None:
            with RawClient(coordinator_api) as raw:
                i = 6
                while not stop.is_set():
                    offsets = [["t", q, i * 10 + q] for q in range(3)]
                    try:
                        reply = raw.call("commit", timeout_s=2.0, group=GROUP,
                                         offsets=offsets, member_id=member,
                                         generation=generation)
                    except AssertionError:  # no reply: the coordinator is dead
                        return
                    if reply["op"] != "commit":
                        errors.append(reply["code"])
                        return
                    acked.update({q: o for _, q, o in offsets})
                    i += 1

        committer = threading.Thread(target=commit_on)
        committer.start()
        wait_for(lambda: acked[0] >= 150, timeout=20, what="commits before the kill")
        brokers[coordinator].kill9()
        stop.set()
        committer.join(10)
        assert not committer.is_alive()
        last_acked = dict(acked)

        survivor = apis[(coordinator + 1) % 3]
        new, new_api = find_coordinator(survivor, exclude=coordinator, timeout=40)
        assert new != coordinator and new_api == apis[new]
        with RawClient(new_api) as raw:
            gone = raw.call("heartbeat", group=GROUP, member_id=member)
        assert gone.get("code") in {"NOT_MEMBER"} | RETRIABLE, gone
        rejoined = coordinator_call(new_api, "join", group=GROUP, topics=["t"],
                                    session_timeout_ms=30_000)
        assert rejoined["op"] == "join" and len(rejoined["assignment"]) == 3, rejoined
        after = committed(new_api)
        for q, offset in last_acked.items():  # none lost, none moved backwards
            assert after.get(q, -1) >= offset, (q, after, last_acked)

        # The new coordinator fences and stores commits of the rejoined member.
        with RawClient(new_api) as raw:
            raw.ok("commit", group=GROUP, offsets=[["t", 0, after[0] + 1]],
                   member_id=rejoined["member_id"], generation=rejoined["generation"])
            assert raw.ok("describe_group", group=GROUP)["generation"] >= 1
            raw.ok("leave", group=GROUP, member_id=rejoined["member_id"])
            raw.ok("delete_group", group=GROUP)
            assert GROUP not in raw.ok("list_groups")["groups"]
        assert committed(new_api) == {}
    finally:
        for b in brokers:
            b.stop()


def test_a_commit_is_refused_when_its_offsets_partition_has_too_few_in_sync_replicas(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=1)
        coordinator, api = find_coordinator(apis[0])
        wait_in_sync(apis, "__rail_offsets", 8, 3)
        assert coordinator_call(api, "commit", group=GROUP, offsets=[["t", 0, 5]])["op"] \
            == "commit"
        for i, broker in enumerate(brokers):  # the offsets partition keeps only its leader
            if i != coordinator:
                broker.kill9()
        with RawClient(api) as raw:
            waiting = raw.call("commit", timeout_s=30, group=GROUP, offsets=[["t", 0, 6]])
            assert waiting.get("code") == "NOT_ENOUGH_REPLICAS", waiting
            refused = raw.call("commit", group=GROUP, offsets=[["t", 0, 7]])
            assert refused["code"] == "NOT_ENOUGH_REPLICAS", refused
            assert "nothing was stored" in refused["message"]
            described = raw.ok("describe_group", group=GROUP)["partitions"]
            # 6 may stay stored (appended before the ISR shrank), 7 never is
            assert [p["committed"] for p in described] in ([5], [6]), described
    finally:
        for b in brokers:
            b.stop()


def test_a_coordinator_paused_past_its_session_never_acknowledges_a_commit_and_steps_down(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:
    brokers = start_three(tmp_path, zookeeper)
    try:
        apis = [b.api for b in brokers]
        with RawClient(apis[0]) as raw:
            raw.ok("create_topic", topic="t", partitions=1)
        coordinator, old_api = find_coordinator(apis[0])
        wait_in_sync(apis, "__rail_offsets", 8, 3)
        assert coordinator_call(old_api, "commit", group=GROUP,
                                offsets=[["t", 0, 10]])["op"] == "commit"
        old = brokers[coordinator]
        with RawClient(old_api) as stale:
            os.kill(old.pid, signal.SIGSTOP)
            try:  # read by the old coordinator only once it wakes
                stale.send_frames([msgspec.msgpack.encode({
                    "op": "commit", "id": 1, "group": GROUP, "offsets": [["t", 0, 99]]})])
                survivor = apis[(coordinator + 1) % 3]
                _, new_api = find_coordinator(survivor, exclude=coordinator, timeout=40)
                assert coordinator_call(new_api, "commit", group=GROUP,
                                        offsets=[["t", 0, 20]])["op"] == "commit"
            finally:
                os.kill(old.pid, signal.SIGCONT)
            answer = stale.recv_reply(timeout_s=30)
            assert answer is not None and answer["op"] == "error", \
                f"the paused coordinator must not acknowledge a commit: {answer!r}"
            assert answer["code"] in ("NOT_COORDINATOR", "NOT_ENOUGH_REPLICAS"), answer

        def stepped_down() -> bool:
            with RawClient(old_api) as raw:
                return raw.call("describe_group", group=GROUP)["op"] == "error"
        wait_for(stepped_down, timeout=30, interval=0.2, what="the old coordinator to step down")
        with RawClient(old_api) as raw:
            refused = raw.call("commit", group=GROUP, offsets=[["t", 0, 30]])
            assert refused["code"] == "NOT_COORDINATOR", refused
        assert committed(new_api) == {0: 20}
    finally:
        for b in brokers:
            if b.proc.poll() is None:
                os.kill(b.pid, signal.SIGCONT)
            b.stop()
