"""The cluster's state in ZooKeeper; the one module that imports kazoo.

Znodes, under the chroot given with ``--zookeeper host:port/chroot`` (see docs/cluster.md):

    /brokers/ids/<id>                      ephemeral {"id", "api", "ingest"}
    /controller                            ephemeral {"broker_id", "epoch"}
    /controller_epoch                      the last controller's epoch (its version fences)
    /topics/<name>                         {"config", "replicas": [[broker, ...], ...], "topic_id"}
    /topics/<name>/partitions/<p>/state    PartitionState, changed only by compare-and-set
    /admin/delete_topics/<name>            the id of a topic marked for deletion
    /admin/delete_topics/<name>/<id>       broker <id> deleted its copy
    /admin/reassign_partitions/<name>:<p>  {"replicas", "original", "cancelled", "throttle"}: a reassignment in progress

Watches fire on kazoo's thread; ``ClusterStore`` only turns them into events for
``on_event``, which the broker loop reads (never touches broker state from that thread).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.hosts import collect_hosts
from kazoo.protocol.paths import normpath
from kazoo.retry import KazooRetry

log = logging.getLogger("brokerd.cluster")


class ClusterError(Exception):
    """ZooKeeper said no, or could not be reached; the message says which."""


class StaleVersion(ClusterError):
    """A compare-and-set lost: someone changed the znode since it was read."""


class PartitionState(msgspec.Struct, kw_only=True):
    leader: int
    """The leader's broker id; -1 while no in-sync replica is alive (offline)."""
    leader_epoch: int
    isr: list[int]
    controller_epoch: int


class TopicRecord(msgspec.Struct, kw_only=True):
    config: dict[str, Any]
    replicas: list[list[int]]
    topic_id: str = ""
    """32 hex digits (a uuid4), new for every topic created, so that a topic deleted and
    created again under its name is another topic (Kafka's KIP-516); "" in a topic
    written before ids existed, until a broker gives it one (``assign_topic_id``)."""


class BrokerRecord(msgspec.Struct, kw_only=True):
    id: int
    api: str
    ingest: str


Event = tuple[Any, ...]
DELETIONS = "/admin/delete_topics"
REASSIGNMENTS = "/admin/reassign_partitions"


class PendingReassignment(msgspec.Struct, kw_only=True):
    replicas: list[int]
    """The target replica list."""
    original: list[int]
    """The replica list when it was asked for (to tell who joins and who leaves)."""
    cancelled: bool = False
    """Cancelled (``cancel_reassignments``): the controller takes the list back to
    ``original`` instead."""
    throttle: int = 0
    """Bytes a second the leader sends each new replica while it catches up (0: no limit)."""


def connect_string_problem(hosts: str) -> str | None:
    """What is wrong with a ``--zookeeper`` string, found before any connection is tried
    (a chroot with ``.`` or ``..`` once stopped the broker with a traceback)."""
    try:
        _, chroot = collect_hosts(hosts)
        if chroot:
            normpath(chroot)
    except ValueError as exc:
        return f"--zookeeper {hosts!r} is not host:port[,host:port...][/chroot]: {exc}"
    return None


class ClusterStore:
    """A ZooKeeper session for one broker.  Calls block (bounded by the session timeout)."""

    def __init__(self, hosts: str, broker_id: int, on_event: Callable[[Event], None],
                 session_timeout_s: float = 6.0) -> None:
        self.broker_id = broker_id
        self.hosts = hosts
        self.session_timeout_s = session_timeout_s
        self.on_event = on_event
        # Retry connecting for ever: after a lost session, kazoo opens a new one.
        self.zk = KazooClient(hosts=hosts, timeout=session_timeout_s,
                              connection_retry=KazooRetry(max_tries=-1, max_delay=1.0))
        self.zk.add_listener(self._state_changed)
        self._watched: set[str] = set()

    # -- session ----------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> None:
        try:
            self.zk.start(timeout=timeout_s)
        except KazooTimeoutError as exc:
            raise ClusterError(f"cannot reach ZooKeeper at {self.hosts} within "
                               f"{timeout_s:g} s: is it running?") from exc
        if self.zk.chroot:
            self._ensure_chroot(timeout_s)
        for path in ("/brokers/ids", "/topics", DELETIONS, REASSIGNMENTS):
            self.zk.ensure_path(path)

    def _ensure_chroot(self, timeout_s: float) -> None:
        """Create the chroot the connect string names, as Kafka does (KAFKA-404): a client
        bound to it cannot create it (kazoo's paths are all below it), and without it the
        first write fails with a bare ``NoNodeError``."""
        if self.zk.exists("/") is not None:
            return
        root = KazooClient(hosts=self.hosts.split("/", 1)[0], timeout=self.session_timeout_s)
        root.start(timeout=timeout_s)
        try:
            root.ensure_path(self.zk.chroot)
        finally:
            root.stop()
            root.close()

    def stop(self) -> None:
        try:
            self.zk.stop()
            self.zk.close()
        except KazooException:
            pass

    def _state_changed(self, state: str) -> None:
        self.on_event(("session", str(state)))

    @property
    def connected(self) -> bool:
        return self.zk.state == KazooState.CONNECTED

    # -- brokers ----------------------------------------------------------------------
    def register(self, api: str, ingest: str) -> None:
        """Create this broker's ephemeral registration.  One left by this broker's previous
        process (killed, its session not yet expired) is waited out, up to a session
        timeout and a half; one still there after that belongs to a live broker."""
        data = msgspec.json.encode(BrokerRecord(id=self.broker_id, api=api, ingest=ingest))
        path = f"/brokers/ids/{self.broker_id}"
        deadline = time.monotonic() + self.session_timeout_s * 1.5
        while True:
            try:
                self.zk.create(path, data, ephemeral=True)
                return
            except NodeExistsError as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"broker id {self.broker_id} is already registered (another broker "
                        "runs with it): give each broker its own --broker-id") from exc
                time.sleep(0.25)

    def unregister(self) -> None:
        """Delete this broker's registration: to the controller it is gone (its leaderships
        move, it leaves every ISR) while its session and watches stay."""
        try:
            self.zk.delete(f"/brokers/ids/{self.broker_id}")
        except NoNodeError:
            pass

    def resign_controller(self) -> None:
        """Delete /controller if this broker holds it: the other brokers' watches elect."""
        try:
            data, stat = self.zk.get("/controller")
            if int(msgspec.json.decode(data)["broker_id"]) == self.broker_id:
                self.zk.delete("/controller", version=stat.version)
        except (NoNodeError, BadVersionError):
            pass

    def brokers(self) -> dict[int, BrokerRecord]:
        out = {}
        for child in self.zk.get_children("/brokers/ids", watch=self._brokers_watch):
            try:
                data, _ = self.zk.get(f"/brokers/ids/{child}")
            except NoNodeError:
                continue
            record = msgspec.json.decode(data, type=BrokerRecord)
            out[record.id] = record
        return out

    def _brokers_watch(self, event: Any) -> None:
        self.on_event(("brokers",))

    # -- controller -------------------------------------------------------------------
    def try_become_controller(self) -> int | None:
        """Create /controller if nobody holds it; return this controller's epoch (or None,
        with a watch that reports the controller's end)."""
        epoch, version = self._controller_epoch()
        try:
            self.zk.create("/controller", msgspec.json.encode(
                {"broker_id": self.broker_id, "epoch": epoch + 1}), ephemeral=True)
        except NodeExistsError:
            if self.zk.exists("/controller", watch=self._controller_watch) is None:
                return self.try_become_controller()
            return None
        try:
            self.zk.set("/controller_epoch", str(epoch + 1).encode(), version=version)
        except BadVersionError:  # another controller came and went meanwhile: step back
            self.zk.delete("/controller")
            return None
        return epoch + 1

    def _controller_epoch(self) -> tuple[int, int]:
        try:
            data, stat = self.zk.get("/controller_epoch")
        except NoNodeError:
            try:
                self.zk.create("/controller_epoch", b"0")
            except NodeExistsError:
                pass
            data, stat = self.zk.get("/controller_epoch")
        return int(data or b"0"), stat.version

    def controller_epoch_version(self) -> int:
        return self._controller_epoch()[1]

    def _controller_watch(self, event: Any) -> None:
        self.on_event(("controller",))

    def controller(self) -> int | None:
        try:
            data, _ = self.zk.get("/controller", watch=self._controller_watch)
        except NoNodeError:
            return None
        return int(msgspec.json.decode(data)["broker_id"])

    # -- topics -----------------------------------------------------------------------
    def create_topic(self, name: str, record: TopicRecord, states: list[PartitionState]) -> None:
        tx = self.zk.transaction()
        tx.create(f"/topics/{name}", msgspec.json.encode(record))
        tx.create(f"/topics/{name}/partitions")
        for p, state in enumerate(states):
            tx.create(f"/topics/{name}/partitions/{p}")
            tx.create(f"/topics/{name}/partitions/{p}/state", msgspec.json.encode(state))
        results = tx.commit()
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            if isinstance(failed[0], NodeExistsError):
                raise ClusterError(f"topic {name!r} already exists")
            raise ClusterError(f"cannot create topic {name!r} in ZooKeeper: {failed[0]!r}")

    def topics(self) -> list[str]:
        return sorted(self.zk.get_children("/topics", watch=self._topics_watch))

    def _topics_watch(self, event: Any) -> None:
        self.on_event(("topics",))

    def topic(self, name: str) -> TopicRecord | None:
        try:
            data, _ = self.zk.get(f"/topics/{name}")
        except NoNodeError:
            return None
        return msgspec.json.decode(data, type=TopicRecord)

    def topic_versioned(self, name: str) -> tuple[TopicRecord, int] | None:
        try:
            data, stat = self.zk.get(f"/topics/{name}")
        except NoNodeError:
            return None
        return msgspec.json.decode(data, type=TopicRecord), stat.version

    def assign_topic_id(self, name: str) -> TopicRecord | None:
        """Give a topic written before ids existed one (compare-and-set: every broker
        that tries ends with the same id); the record as stored now."""
        found = self.topic_versioned(name)
        if found is None or found[0].topic_id:
            return None if found is None else found[0]
        record = msgspec.structs.replace(found[0], topic_id=uuid.uuid4().hex)
        try:
            self.zk.set(f"/topics/{name}", msgspec.json.encode(record), version=found[1])
        except (BadVersionError, NoNodeError):
            return self.topic(name)
        log.info("topic %s had no id: gave it %s", name, record.topic_id)
        return record

    def add_partitions(self, name: str, record: TopicRecord, version: int, first: int,
                       states: list[PartitionState]) -> None:
        """Store ``record`` (more partitions) if the topic is still at ``version``, with
        the new partitions' states, in one transaction."""
        tx = self.zk.transaction()
        tx.set_data(f"/topics/{name}", msgspec.json.encode(record), version)
        for p, state in enumerate(states, start=first):
            tx.create(f"/topics/{name}/partitions/{p}")
            tx.create(f"/topics/{name}/partitions/{p}/state", msgspec.json.encode(state))
        results = tx.commit()
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise StaleVersion(f"topic {name!r} changed meanwhile: {failed[0]!r}")

    def watch_topic(self, name: str) -> None:
        """Report every change of the topic's record (more partitions) as ``("topic",
        name)``."""
        path = f"/topics/{name}"
        if path in self._watched:
            return
        self._watched.add(path)

        def changed(data: bytes | None, stat: Any) -> None:
            if data is not None:
                self.on_event(("topic", name))

        self.zk.DataWatch(path, changed)

    # -- topic deletion ---------------------------------------------------------------
    def mark_for_deletion(self, name: str, topic_id: str) -> None:
        try:
            self.zk.create(f"{DELETIONS}/{name}", topic_id.encode())
        except NodeExistsError:
            pass  # marked already: deleting it twice is deleting it once

    def marked_for_deletion(self) -> dict[str, str]:
        """{topic: its id} of the topics marked for deletion (watched)."""
        out = {}
        for name in self.zk.get_children(DELETIONS, watch=self._deletions_watch):
            try:
                data, _ = self.zk.get(f"{DELETIONS}/{name}")
            except NoNodeError:
                continue
            out[name] = data.decode()
        return out

    def _deletions_watch(self, event: Any) -> None:
        self.on_event(("deletions",))

    def deletion_acks(self, name: str) -> set[int]:
        """The brokers that deleted their copy of ``name`` (watched)."""
        try:
            return {int(c) for c in self.zk.get_children(f"{DELETIONS}/{name}",
                                                          watch=self._deletions_watch)}
        except NoNodeError:
            return set()

    def ack_deletion(self, name: str) -> None:
        try:
            self.zk.create(f"{DELETIONS}/{name}/{self.broker_id}")
        except (NodeExistsError, NoNodeError):
            pass  # acknowledged already, or the deletion is over

    def remove_topic(self, name: str, controller_epoch_version: int) -> None:
        """Delete the topic's znodes and its deletion mark in one transaction that also
        checks the controller epoch (only the current controller completes a deletion)."""
        paths = [f"{DELETIONS}/{name}/{c}" for c in self._children(f"{DELETIONS}/{name}")]
        if self.zk.exists(f"{DELETIONS}/{name}"):
            paths.append(f"{DELETIONS}/{name}")
        base = f"/topics/{name}"
        if self.zk.exists(base):
            for p in self._children(f"{base}/partitions"):
                paths += [f"{base}/partitions/{p}/state", f"{base}/partitions/{p}"]
            paths += [f"{base}/partitions", base]
        tx = self.zk.transaction()
        tx.check("/controller_epoch", controller_epoch_version)
        for path in paths:
            tx.delete(path)
        results = tx.commit()
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise StaleVersion(f"cannot remove topic {name!r}: {failed[0]!r}")

    # -- reassignment ------------------------------------------------------------------
    def start_reassignments(
            self, plan: dict[tuple[str, int], PendingReassignment],
            changed: dict[tuple[str, int], tuple[PendingReassignment, int]] | None = None
    ) -> None:
        """Create one znode per partition of ``plan`` and rewrite those of ``changed`` (a
        new throttle: compare-and-set at the version read) in one transaction: all or none
        (a partition with a reassignment in progress already fails it, as does one of
        ``changed`` that finished or changed meanwhile)."""
        changed = changed or {}
        tx = self.zk.transaction()
        for (name, partition), pending in plan.items():
            tx.create(f"{REASSIGNMENTS}/{name}:{partition}", msgspec.json.encode(pending))
        for (name, partition), (pending, version) in changed.items():
            tx.set_data(f"{REASSIGNMENTS}/{name}:{partition}", msgspec.json.encode(pending),
                        version)
        results = tx.commit()
        for (name, partition), result in zip([*plan, *changed], results):
            if isinstance(result, NodeExistsError):
                raise ClusterError(f"{name}[{partition}] is being reassigned already: wait "
                                   "for it to complete (rail cluster reassign --list)")
            if isinstance(result, (NoNodeError, BadVersionError)):
                raise ClusterError(f"{name}[{partition}]: its reassignment finished or "
                                   "changed meanwhile: look again (rail cluster reassign --list)")
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise ClusterError(f"cannot start the reassignment: {failed[0]!r}")

    def reassignments(self, watch: bool = False) -> dict[tuple[str, int], PendingReassignment]:
        """The reassignments in progress (with ``watch``: report the next change as
        ``("reassign",)``: one started, finished or cancelled)."""
        out = {}
        watcher = self._reassign_watch if watch else None
        for child in self.zk.get_children(REASSIGNMENTS, watch=watcher):
            name, _, partition = child.rpartition(":")
            try:
                data, _ = self.zk.get(f"{REASSIGNMENTS}/{child}", watch=watcher)
            except NoNodeError:
                continue
            out[(name, int(partition))] = msgspec.json.decode(data, type=PendingReassignment)
        return out

    def reassignment(self, name: str, partition: int) -> tuple[PendingReassignment, int] | None:
        """One reassignment in progress and its znode's version (None: there is none)."""
        try:
            data, stat = self.zk.get(f"{REASSIGNMENTS}/{name}:{partition}")
        except NoNodeError:
            return None
        return msgspec.json.decode(data, type=PendingReassignment), stat.version

    def cancel_reassignment(self, name: str, partition: int) -> bool:
        """Mark a reassignment in progress cancelled (compare-and-set: the controller's
        last step deletes the znode at the version it read, so it either finishes before
        this or sees the mark); False if there is none to cancel."""
        while True:
            found = self.reassignment(name, partition)
            if found is None:
                return False
            pending, version = found
            if pending.cancelled:
                return True
            marked = msgspec.structs.replace(pending, cancelled=True)
            try:
                self.zk.set(f"{REASSIGNMENTS}/{name}:{partition}",
                            msgspec.json.encode(marked), version)
                return True
            except BadVersionError:
                continue  # changed meanwhile: read it again
            except NoNodeError:
                return False  # finished meanwhile

    def _reassign_watch(self, event: Any) -> None:
        self.on_event(("reassign",))

    def set_assignment(self, name: str, record: TopicRecord, version: int,
                       controller_epoch_version: int) -> None:
        """The controller stores a topic's new replica lists (compare-and-set)."""
        tx = self.zk.transaction()
        tx.check("/controller_epoch", controller_epoch_version)
        tx.set_data(f"/topics/{name}", msgspec.json.encode(record), version)
        results = tx.commit()
        if any(isinstance(r, Exception) for r in results):
            raise StaleVersion(f"topic {name!r}: a newer controller or record: {results!r}")

    def finish_reassignment(self, name: str, partition: int, record: TopicRecord,
                            version: int, state: PartitionState, state_version: int,
                            controller_epoch_version: int, reassign_version: int) -> None:
        """The last step, in one transaction: the final replica list, then the partition's
        state (so a broker sees the list before the ISR that follows it), the znode gone
        (at the version read: a cancel made meanwhile fails the whole step)."""
        tx = self.zk.transaction()
        tx.check("/controller_epoch", controller_epoch_version)
        tx.set_data(f"/topics/{name}", msgspec.json.encode(record), version)
        tx.set_data(f"/topics/{name}/partitions/{partition}/state",
                    msgspec.json.encode(state), state_version)
        tx.delete(f"{REASSIGNMENTS}/{name}:{partition}", reassign_version)
        results = tx.commit()
        if any(isinstance(r, Exception) for r in results):
            raise StaleVersion(f"{name}[{partition}]: a newer controller, record or state: "
                               f"{results!r}")

    def drop_reassignment(self, name: str, partition: int) -> None:
        try:
            self.zk.delete(f"{REASSIGNMENTS}/{name}:{partition}")
        except NoNodeError:
            pass

    def _children(self, path: str) -> list[str]:
        try:
            return list(self.zk.get_children(path))
        except NoNodeError:
            return []

    def watch_state(self, topic: str, partition: int) -> None:
        """Report every change of the partition's state as a ``("state", ...)`` event
        (and the state now, when it is watched already: a topic created again)."""
        path = f"/topics/{topic}/partitions/{partition}/state"
        if path in self._watched:
            state, version = self.state(topic, partition)
            self.on_event(("state", topic, partition, state, version))
            return
        self._watched.add(path)

        def changed(data: bytes | None, stat: Any) -> None:
            if data is not None:
                state = msgspec.json.decode(data, type=PartitionState)
                self.on_event(("state", topic, partition, state, stat.version))

        self.zk.DataWatch(path, changed)

    def state(self, topic: str, partition: int) -> tuple[PartitionState, int]:
        data, stat = self.zk.get(f"/topics/{topic}/partitions/{partition}/state")
        return msgspec.json.decode(data, type=PartitionState), stat.version

    def set_state(self, topic: str, partition: int, state: PartitionState, version: int,
                  controller_epoch_version: int | None = None) -> int:
        """Compare-and-set; a controller also checks its epoch is still the latest."""
        path = f"/topics/{topic}/partitions/{partition}/state"
        data = msgspec.json.encode(state)
        if controller_epoch_version is None:
            try:
                return int(self.zk.set(path, data, version=version).version)
            except BadVersionError as exc:
                raise StaleVersion(f"{topic}[{partition}] state changed meanwhile") from exc
        tx = self.zk.transaction()
        tx.check("/controller_epoch", controller_epoch_version)
        tx.set_data(path, data, version)
        results = tx.commit()
        if any(isinstance(r, Exception) for r in results):
            raise StaleVersion(f"{topic}[{partition}]: a newer controller or state: {results!r}")
        return version + 1
