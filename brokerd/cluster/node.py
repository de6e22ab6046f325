"""This broker's part in a cluster: replica roles, the leader's side of replication, and
the controller when elected.

Everything here runs on the broker loop, the replica fetcher too.  ZooKeeper watches run on
kazoo's threads and only post events (``_post``), which wake the loop through a pipe;
``handle_events`` applies them one at a time, like Kafka's controller event queue.  ZooKeeper
writes are compare-and-set on the znode version; the controller's also check the controller
epoch, so a controller that was replaced cannot decide anything.  An ISR change is stored
in ZooKeeper before the leader relies on it.  On a suspended or lost ZooKeeper session every
leader replica steps down at once: no produce is taken or acknowledged until the session
is back and the state re-read.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import queue
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import KazooException

from brokerd import protocol as p
from brokerd.cluster import admin
from brokerd.cluster.coordinator import OFFSETS_TOPIC, GroupOffsets, GroupTopics
from brokerd.cluster.epochs import LeaderEpochs
from brokerd.cluster.fetcher import Follow, ReplicaFetcher
from brokerd.cluster.reassign import Reassigner
from brokerd.cluster.replica import FOLLOWER, LEADER, Replica
from brokerd.cluster.topic_id import read_topic_id, write_topic_id
from brokerd.cluster.zk import (
    BrokerRecord,
    ClusterError,
    ClusterStore,
    PartitionState,
    StaleVersion,
    TopicRecord,
)
from brokerd.config import topic_config
from brokerd.errors import (
    BadRequest,
    CorruptLogError,
    FencedLeaderEpoch,
    NotController,
    NotCoordinator,
    NotEnoughReplicas,
    NotLeader,
    OffsetOutOfRange,
    RailError,
    StorageError,
    TopicExists,
    UnknownLeaderEpoch,
    UnknownPartition,
    UnknownTopic,
)
from brokerd.groups import Coordinator
from brokerd.log.batch import HEADER, HEADER_SIZE
from brokerd.log.files import write_all
from brokerd.topics import check_name
from brokerd.waiters import topic_key

if TYPE_CHECKING:
    from brokerd.config import BrokerConfig
    from brokerd.server import Broker
    from brokerd.topics import Topic
    from brokerd.waiters import Client

log = logging.getLogger("brokerd.cluster")
TP = tuple[str, int]
FETCH_GRID_S = 0.25  # idle replica_fetch_many answers come on this grid (below)
ISR_CHECK_S = 0.5
STORAGE_RETRY_S = 1.0  # a follower whose append failed (a full disk) fetches again after
STORAGE_PROBE_S = 2.0  # a broker withdrawn for its disk tries a write this often
PROBE_BYTES = 1 << 20
# The errors of a write that say the disk cannot take this broker's data now: a leader that
# meets one withdraws (``storage_failed``).  Others (out of descriptors, say) do not.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
# The events whose handling calls ZooKeeper.
ZK_EVENTS = frozenset({"brokers", "controller", "topics", "topic", "state", "deletions",
                       "reassign"})


class Cluster:
    def __init__(self, broker: Broker, config: BrokerConfig) -> None:
        self.broker = broker
        self.config = config
        self.id = config.broker_id
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.wake_fd, self._notify_fd = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._notify_fd, False)
        self.store = ClusterStore(config.zookeeper, self.id, self._post,
                                  config.zookeeper_session_timeout_ms / 1000)
        security = broker.security
        self.fetcher = ReplicaFetcher(self.id, self._apply, broker.context,
                                      security.connect_securely if security else None)
        self.replicas: dict[TP, Replica] = {}
        self.topic_records: dict[str, TopicRecord] = {}
        self.deleting: dict[str, str] = {}
        """The topics marked for deletion in ZooKeeper, with their ids."""
        self.other_states: dict[TP, PartitionState | None] = {}
        """The states of the partitions of local topics this broker holds no replica of
        (for metadata); None until the watch has read it."""
        self._checked: set[str] = set()
        """Local topics whose partitions' ids were compared with ZooKeeper's since the
        session (re)started."""
        # Groups live in __rail_offsets here: the broker's coordinator keeps their
        # offsets there and counts partitions by ZooKeeper's topic records.
        self.group_offsets = GroupOffsets(broker, self)
        broker.coordinator = Coordinator(self.group_offsets, GroupTopics(self),
                                         broker._rebalanced)
        if broker.security is not None:
            broker.security.follow_groups(broker.coordinator)
        self.brokers: dict[int, BrokerRecord] = {}
        self.controller_id = -1
        self.controller_epoch: int | None = None
        self.controller_epoch_version = -1
        self.fenced = False
        self._lost = False
        self.withdrawn = ""
        """Why this broker withdrew from the cluster for its disk ("" while it has not):
        it leads nothing and is not registered until a test write succeeds."""
        self._probe_at = 0.0
        self._unregistered = False
        self.next_timer = time.monotonic() + ISR_CHECK_S
        self._endpoints = ("", "")
        self.reassigner = Reassigner(self)

    # -- life -------------------------------------------------------------------------
    def start(self, api: str, ingest: str) -> None:
        """Join: connect, register, take up every replica this broker holds."""
        self._endpoints = (self.config.advertise or api, ingest)
        self.store.start(self.config.zookeeper_connection_timeout_ms / 1000)
        self.store.register(*self._endpoints)
        self._refresh()
        log.info("broker %d joined the cluster at %s (controller: %d)", self.id,
                 self.config.zookeeper, self.controller_id)

    def stop(self) -> None:
        self.fetcher.stop()
        self.store.stop()
        os.close(self.wake_fd)
        os.close(self._notify_fd)

    def _post(self, event: tuple[Any, ...]) -> None:
        """From any thread: queue ``event`` for the loop and wake it."""
        self._events.put(event)
        try:
            os.write(self._notify_fd, b"!")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (the loop will look anyway) or closed (stopping)

    def _refresh(self) -> None:
        self.brokers = self.store.brokers()
        self._elect_controller()
        self.reassigner.changed()  # the throttles (and, as controller, the moves)
        self._checked.clear()
        admin.apply_deletions(self)  # first: a topic marked for deletion is not taken up
        self._topics_changed()
        for tp in self.other_states:
            self.other_states[tp] = self.store.state(*tp)[0]
        for tp, replica in self.replicas.items():  # apply what is there now, whatever we had
            state, version = self.store.state(*tp)
            replica.version = -1
            self._apply_state(tp, state, version)

    # -- events -----------------------------------------------------------------------
    def handle_events(self) -> None:
        try:
            os.read(self.wake_fd, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            self._apply(event)

    def _apply(self, event: tuple[Any, ...]) -> None:
        """Handle one event (from ``handle_events``, or the fetcher's answers directly)."""
        try:
            self._handle(event)
        except (KazooException, ClusterError) as exc:
            log.warning("cluster event %s failed: %r; retried when ZooKeeper is back",
                        event[0], exc)
        except RailError as exc:
            log.error("cluster event %s failed: %s", event[0], exc.message)

    def _handle(self, event: tuple[Any, ...]) -> None:
        if event[0] in ZK_EVENTS and not self.store.connected:
            # A ZooKeeper call made while the connection is away waits until it is back,
            # and the loop with it: every client would hang.  What these events would
            # read, _refresh reads again once the session is back.
            return
        match event:
            case ("session", state):
                self._session(state)
            case ("brokers",):
                before, self.brokers = self.brokers, self.store.brokers()
                for joined in self.brokers.keys() - before.keys():  # a restart may be an
                    self.fetcher.leader_joined(self.brokers[joined].api)  # upgrade
                if self.controller_epoch is not None:
                    self._elect_leaders()
                    admin.complete_deletions(self)
            case ("controller",):
                self._elect_controller()
            case ("topics",):
                self._topics_changed()
                for name in self.topic_records:
                    self.broker.waiting.data_arrived(topic_key(name))
            case ("topic", name):
                self._topic_seen(name)
                self.broker.waiting.data_arrived(topic_key(name))
            case ("deletions",):
                admin.apply_deletions(self)
            case ("reassign",):
                self.reassigner.changed()
            case ("state", topic, partition, state, version):
                if self.fenced:
                    pass
                elif (topic, partition) in self.other_states:
                    self.other_states[(topic, partition)] = state
                else:
                    self._apply_state((topic, partition), state, version)
                self.broker.waiting.data_arrived(topic_key(topic))  # a create_topic waits
            case ("truncate", tp, topic_id, leader_epoch, epoch, end_offset):
                if self._following(tp, topic_id, leader_epoch):
                    self._truncate(self.replicas[tp], leader_epoch, epoch, end_offset)
            case ("fetched", tp, topic_id, leader_epoch, offset, reply):
                if self._following(tp, topic_id, leader_epoch):
                    self._fetched(self.replicas[tp], leader_epoch, offset, reply)

    def _session(self, state: str) -> None:
        if state in ("SUSPENDED", "LOST"):
            self._lost = self._lost or state == "LOST"
            if not self.fenced:
                log.warning("ZooKeeper session %s: every leader replica steps down", state)
            self.fenced = True
            self.controller_epoch = None
            for replica in self.replicas.values():
                if replica.role == LEADER:
                    self._step_down(replica)
        elif state == "CONNECTED" and self.fenced:
            if self.withdrawn:  # stays fenced; _probe_storage registers again
                return
            self.fenced = False
            if self._lost:
                self._lost = False
                self.store.register(*self._endpoints)
            log.info("ZooKeeper session back: re-reading the cluster's state")
            self._refresh()

    # -- topics and replica states ----------------------------------------------------
    def _topics_changed(self) -> None:
        """ZooKeeper's list of topics changed (or the session is back): take up the new
        ones, and delete the local copies of cluster topics that are gone."""
        names = self.store.topics()
        for name in [n for n in self.broker.topics.topics if n not in names]:
            topic = self.broker.topics.topics[name]
            if any(read_topic_id(plog.directory) for plog in topic.partitions):
                log.warning("topic %s was deleted from the cluster while this broker was "
                            "away: deleting its local copy", name)
                self.drop_topic(name)
        for name in set(self.topic_records) - set(names):
            self.drop_topic(name)
        for name in names:
            self._topic_seen(name)

    def _topic_seen(self, name: str) -> None:
        """Take up ``name`` as ZooKeeper holds it now: its record, a local copy of the
        same topic id (an older topic's copy is deleted first), its new partitions."""
        record = self.store.topic(name)
        if record is not None and not record.topic_id:
            record = self.store.assign_topic_id(name)
        if record is None:
            return
        self.store.watch_topic(name)
        local = self.broker.topics.topics.get(name)
        if local is not None and name not in self._checked:
            ids = {read_topic_id(plog.directory) for plog in local.partitions} - {""}
            if ids and ids != {record.topic_id}:
                log.warning("%s: the local copy is of an older topic of that name (id %s, "
                            "now %s): deleting it", name, ",".join(ids), record.topic_id)
                self.drop_topic(name)
        if self.topic_records.get(name) != record:
            self.topic_records[name] = record
            self.broker.coordinator.topics_changed({name})
        if name in self.deleting:
            return
        self.reassigner.assignment_changed(name, record)
        # a topic this broker holds no replica of is watched too: its metadata names the
        # leaders, so a client may bootstrap from any broker
        held = any(self.id in r for r in record.replicas)
        topic = self._local_copy(name, record) if held else None
        min_isr = int(record.config.get("min_insync_replicas") or 1)
        for index, replicas in enumerate(record.replicas):
            tp = (name, index)
            if topic is not None and self.id in replicas and tp not in self.replicas:
                plog = topic.partitions[index]
                self.replicas[tp] = Replica(name, index, self.id, plog,
                                            LeaderEpochs(plog.directory), replicas, min_isr,
                                            topic_id=record.topic_id)
                if plog.high_watermark is None:
                    plog.high_watermark = 0
                self.store.watch_state(name, index)
            elif self.id not in replicas and tp not in self.other_states:
                self.other_states[tp] = None
                self.store.watch_state(name, index)

    def _local_copy(self, name: str, record: TopicRecord) -> Topic:
        """This broker's copy of ``name`` (of the record's topic id, checked by the
        caller): created, grown to the record's partitions, each partition's id stored (a
        copy without ids, from before ids, adopts the record's)."""
        topics = self.broker.topics
        topic = topics.topics.get(name)
        changed = topic is None or len(topic.partitions) < len(record.replicas)
        if topic is None:
            topic = topics.create(name, len(record.replicas), record.config)
        elif len(topic.partitions) < len(record.replicas):
            topic = topics.grow(name, len(record.replicas))
        if changed or name not in self._checked:
            for plog in topic.partitions:
                if read_topic_id(plog.directory) != record.topic_id:
                    write_topic_id(plog.directory, record.topic_id)
            self._checked.add(name)
        return topic

    def drop_topic(self, name: str) -> None:
        """Stop leading and following ``name`` and delete the local copy, if any."""
        for tp in [tp for tp in self.replicas if tp[0] == name]:
            replica = self.replicas.pop(tp)
            self._step_down(replica)
            self.fetcher.unfollow(tp)
        for tp in [tp for tp in self.other_states if tp[0] == name]:
            del self.other_states[tp]
        self._checked.discard(name)
        if self.topic_records.pop(name, None) is not None:
            self.broker.coordinator.topics_changed({name})
        if name in self.broker.topics.topics:
            self.broker.topics.delete(name)
            self.broker.offsets.forget(topic=name)

    def _apply_state(self, tp: TP, state: PartitionState, version: int) -> None:
        replica = self.replicas.get(tp)
        if replica is None or version <= replica.version:
            return
        same_epoch = replica.leader_epoch == state.leader_epoch
        if state.leader == self.id:
            if replica.role == LEADER and same_epoch:
                self._isr_changed(replica, state, version)
                return
            try:
                replica.become_leader(state, version, time.monotonic())
            except StorageError as exc:  # it cannot record its epoch: let another lead
                self.storage_failed(exc.message, None)
                return
            self.fetcher.unfollow(tp)
            log.info("%s[%d]: leader at epoch %d, isr %s, log end %d", *tp,
                     state.leader_epoch, state.isr, replica.plog.end_offset)
            if replica.topic == OFFSETS_TOPIC:
                self.group_offsets.role_changed(replica, leading=True)
            self._high_watermark_moved(replica)
        elif state.leader < 0:
            self._step_down(replica)
            replica.go_offline(state, version)
            self.fetcher.unfollow(tp)
        elif replica.role == FOLLOWER and same_epoch and replica.state is not None \
                and replica.state.leader == state.leader:
            replica.state, replica.version = state, version
        else:
            self._step_down(replica)
            replica.become_follower(state, version)
            leader = self.brokers.get(state.leader)
            if leader is None:  # not registered yet: the brokers watch brings it
                self.brokers = self.store.brokers()
                leader = self.brokers.get(state.leader)
            if leader is not None:
                self.fetcher.follow(Follow(tp, state.leader, leader.api, state.leader_epoch,
                                           replica.epochs.latest, replica.topic_id))
            log.info("%s[%d]: follower of broker %d at epoch %d", *tp, state.leader,
                     state.leader_epoch)

    def _step_down(self, replica: Replica) -> None:
        """Stop leading: what waits for acks=all on this partition fails (NOT_LEADER; a
        commit or delete_group waiting there, NOT_COORDINATOR)."""
        if replica.role == LEADER:
            replica.go_offline()
            error: RailError = NotLeader(
                f"{replica.topic}[{replica.partition}]: this broker stopped leading "
                "before the batch was replicated: send it to the new leader (metadata)")
            if replica.topic == OFFSETS_TOPIC:
                self.group_offsets.role_changed(replica, leading=False)
                error = NotCoordinator(
                    f"broker {self.id} stopped coordinating before the commit was "
                    "replicated (it may still take effect): call find_coordinator, rejoin "
                    "and commit again")
            for ack in self.broker.acks.fail({replica.plog}):
                self.broker.send_error(ack.client, ack.reply.id, error)

    def _isr_changed(self, replica: Replica, state: PartitionState, version: int) -> None:
        """Adopt a stored ISR.  Below min_insync_replicas, what waits for acks=all fails
        first (it may stay stored: an idempotent retry is not duplicated), and only then
        may the high watermark move on the smaller ISR."""
        replica.state, replica.version = state, version
        self.broker.waiting.data_arrived(replica.key)  # a delete_records may wait for fewer
        if replica.role == LEADER and not replica.enough_in_sync():
            for ack in self.broker.acks.fail({replica.plog}):
                self.broker.send_error(ack.client, ack.reply.id, NotEnoughReplicas(
                    f"{replica.topic}[{replica.partition}]: the in-sync replicas fell to "
                    f"{state.isr}, below min_insync_replicas={replica.min_insync}, after "
                    "the batch was appended: it may be stored; retry it (an idempotent "
                    "producer's retry is not stored twice)"))
        if replica.advance_high_watermark():
            self._high_watermark_moved(replica)

    def _high_watermark_moved(self, replica: Replica) -> None:
        if replica.topic == OFFSETS_TOPIC:
            self.group_offsets.high_watermark_moved(replica)
        self.broker.waiting.data_arrived(replica.key)
        self.broker._settle()

    # -- the follower's side ----------------------------------------------------------
    def _following(self, tp: TP, topic_id: str, leader_epoch: int) -> bool:
        """Whether a fetcher result is for the replica followed now (not for an older
        epoch, nor for a deleted topic of the same name)."""
        replica = self.replicas.get(tp)
        return (replica is not None and replica.role == FOLLOWER
                and replica.leader_epoch == leader_epoch and replica.topic_id == topic_id)

    def _truncate(self, replica: Replica, leader_epoch: int, epoch: int,
                  end_offset: int) -> None:
        tp, plog = replica.key, replica.plog
        if epoch < 0:  # the leader knows no epoch this old: only what was committed is sure
            target = min(plog.high_watermark or 0, plog.end_offset)
        else:
            target = min(end_offset, plog.end_offset)
        if target < plog.end_offset:
            log.warning("%s[%d]: truncating from %d to %d (the leader's end of epoch %d)",
                        *tp, plog.end_offset, target, epoch)
            plog.truncate_to(target)
        replica.epochs.truncate(plog.end_offset)
        self._resume(replica, leader_epoch)

    def _fetched(self, replica: Replica, leader_epoch: int, offset: int,
                 reply: p.ReplicaFetchReply) -> None:
        tp, plog = replica.key, replica.plog
        delay_s = 0.0
        if offset == plog.end_offset:
            try:
                for raw in reply.batches:
                    plog.append_replica(raw[:HEADER_SIZE], memoryview(raw)[HEADER_SIZE:])
                for epoch, start in reply.epochs:
                    if start < plog.end_offset or start == plog.end_offset == reply.end_offset:
                        replica.epochs.assign(epoch, start)
            except StorageError as exc:  # a full disk, say: fetch again after a pause (at
                delay_s = STORAGE_RETRY_S  # once, the same answer would fail the same way)
                if not replica.storage_error:
                    log.error("%s[%d]: %s; trying again every %.0f s", *tp, exc.message,
                              delay_s)
                replica.storage_error = exc.message
                if exc.__cause__ is not None:  # the disk, not the batch: leave the ISRs
                    # now (as a Kafka broker's failed log directory does), not after
                    # replica_lag_time_ms of acks=all produces waiting for this copy
                    self.storage_failed(exc.message, exc.__cause__)
            else:
                if replica.storage_error and reply.batches:
                    log.warning("%s[%d]: appending again after: %s", *tp,
                                replica.storage_error)
                    replica.storage_error = ""
            admin.follow_start_offset(replica, reply.start_offset)
            plog.high_watermark = max(plog.high_watermark or 0,
                                      min(reply.high_watermark, plog.end_offset))
            if reply.batches:
                self.broker.appended(self.broker.topics.topics[tp[0]], tp[1])
        self._resume(replica, leader_epoch, delay_s)

    def _resume(self, replica: Replica, leader_epoch: int, delay_s: float = 0.0) -> None:
        """Fetch ``replica`` again from its log end (its answer is applied)."""
        plog, entries = replica.plog, replica.epochs.entries
        self.fetcher.resume(replica.key, leader_epoch, plog.end_offset, plog.start_offset,
                            delay_s, plog.high_watermark or 0,
                            entries[-1] if entries else (-1, -1))

    # -- the leader's side ------------------------------------------------------------
    def leading(self, topic: str, partition: int) -> Replica:
        replica = self.replicas.get((topic, partition))
        if replica is None or replica.role != LEADER or self.fenced:
            record = self.topic_records.get(topic)
            if replica is None and record is not None and partition >= len(record.replicas):
                raise UnknownPartition(f"topic {topic!r} has partitions "
                                       f"0..{len(record.replicas) - 1}, not {partition}")
            leader = replica.state.leader if replica and replica.state else -1
            raise NotLeader(f"broker {self.id} does not lead {topic}[{partition}] (leader: "
                            f"{leader}): refresh metadata and send it to the leader")
        return replica

    def check_produce(self, topic: str, partition: int, acks: Any) -> None:
        replica = self.leading(topic, partition)
        if acks == "all" and not replica.enough_in_sync():
            raise NotEnoughReplicas(
                f"{topic}[{partition}] has {len(replica.isr)} in-sync replica(s) "
                f"{replica.isr}, fewer than min_insync_replicas={replica.min_insync}: "
                "nothing was stored; retry once replicas catch up")

    @staticmethod
    def check_client_write(topic: str) -> None:
        """A client's produce: never to ``__rail_offsets``, which only coordinators write
        (a record there would move a group's offsets past its generation checks)."""
        admin.refuse_offsets_topic(topic, "clients cannot produce to it (commit through "
                                   "the group's coordinator)")

    def appended(self, topic: str, partition: int) -> None:
        replica = self.replicas.get((topic, partition))
        if replica is not None and replica.advance_high_watermark():
            self._high_watermark_moved(replica)

    def handle_replica_fetch(self, req: p.ReplicaFetch, client: Client) -> p.Reply | None:
        replica, allowed = self._replica_fetched(req)
        if allowed is not None:
            return self._throttled_fetch(replica, req, client, allowed)
        reply = self._replica_reply(replica, req)
        if reply.batches or req.max_wait_ms == 0:
            return reply

        def answer(final: bool) -> bool:
            if replica.role != LEADER or replica.leader_epoch != req.leader_epoch:
                self.broker.send_error(client, req.id, NotLeader("leadership moved"))
                return True
            return self._answer_fetch(client, req, lambda: self._replica_reply(replica, req),
                                      final)
        self.broker._park(client, req.max_wait_ms, answer, [replica.key], None, limited=False)
        return None

    def handle_replica_fetch_many(self, req: p.ReplicaFetchMany,
                                  client: Client) -> p.Reply | None:
        """Each part as its own ``replica_fetch``, answered in streamed replies: the parts
        with batches (up to ``max_bytes`` in a reply: the ones past it come back empty, and
        their follower asks again at once) or an error now; the others stay parked until
        batches come for them, or the deadline, or a throttled part's allowance refills.
        An idle follower of a thousand partitions here costs two requests a second."""
        waiting: dict[TP, p.ReplicaPart] = {}
        refill_s = float("inf")

        def answer_parts(parts: list[p.ReplicaPart], final: bool,
                         note: bool) -> p.ReplicaFetchManyReply:
            nonlocal refill_s
            out = p.ReplicaFetchManyReply(id=req.id, fetched=[], errors=[])
            used = 0
            for part in parts:
                tp = (part.topic, part.partition)
                try:
                    reply, wait_s = self._fetch_part(req, part, req.max_bytes - used, note,
                                                     final)
                except RailError as exc:
                    if isinstance(exc, CorruptLogError):
                        self.damaged(exc)  # as Broker.send_error does for a whole request
                    waiting.pop(tp, None)
                    out.errors.append(p.PartError(part.topic, part.partition, exc.code,
                                                  exc.message))
                    continue
                if reply is None:  # nothing to tell: parked, or at the end left out (the
                    if final:  # follower asks again for what the last reply did not name)
                        waiting.pop(tp, None)
                    else:
                        waiting[tp] = part
                elif reply.batches or final or (used >= req.max_bytes and self._has_news(part)):
                    waiting.pop(tp, None)
                    out.fetched.append(reply)
                    used += sum(len(b) for b in reply.batches)
                else:
                    waiting[tp] = part
                    if wait_s:
                        refill_s = min(refill_s, wait_s)
            out.more = bool(waiting)
            self.broker.stats.count("replica_parts_answered", len(out.fetched))
            return out

        first = answer_parts(req.parts, req.max_wait_ms == 0, note=True)
        if not waiting:
            return first
        if first.fetched or first.errors:
            self.broker.send(client, first)

        def answer(final: bool) -> bool:
            parts = list(waiting.values()) if final else \
                [part for part in waiting.values() if self._has_news(part)]
            if not parts:
                return False
            out = answer_parts(parts, final, note=False)
            if out.fetched or out.errors or not waiting:
                self.broker.send(client, out)
            return not waiting
        if refill_s == float("inf"):
            # Up to a quarter of a second longer, to the next quarter: a follower whose
            # partitions became ready at different times asked in several requests, and
            # they now come back idle together and are asked again as one.
            now = time.monotonic()
            end = math.ceil((now + req.max_wait_ms / 1000) / FETCH_GRID_S) * FETCH_GRID_S
            wait_ms = math.ceil((end - now) * 1000)
        else:
            wait_ms = max(1, min(req.max_wait_ms, int(refill_s * 1000) + 1))
        self.broker._park(client, wait_ms, answer, list(waiting), None, limited=False)
        return None

    def _has_news(self, part: p.ReplicaPart) -> bool:
        """Whether a parked part has something to answer: batches past its offset, or
        its leadership moved."""
        replica = self.replicas.get((part.topic, part.partition))
        return (replica is None or replica.role != LEADER
                or replica.leader_epoch != part.leader_epoch
                or replica.plog.end_offset > part.offset)

    def _fetch_part(self, req: p.ReplicaFetchMany, part: p.ReplicaPart, budget: int,
                    note: bool, final: bool) -> tuple[p.ReplicaFetchReply | None, float]:
        """A part's answer now (up to ``budget`` bytes, at least one batch while it is
        positive), and for a throttled new replica whose allowance is spent, the seconds
        until it refills (else 0); ``note``: as ``_replica_fetched``'s.  None for a part at
        the log's end that would be answered empty before the deadline (a reply that is
        not sent) or, at the deadline (``final``), tell its follower nothing it does not
        know (KIP-227's point: an idle partition costs no answer)."""
        single = p.ReplicaFetch(id=req.id, topic=part.topic, partition=part.partition,
                                offset=part.offset, replica_id=req.replica_id,
                                leader_epoch=part.leader_epoch, max_bytes=req.max_bytes,
                                topic_id=part.topic_id, start_offset=part.start_offset)
        replica, allowed = self._replica_fetched(single, note)
        if allowed is None:
            plog = replica.plog
            if part.offset == plog.end_offset and (not final or self._knows_all(replica, part)):
                return None, 0.0
            return self._replica_reply(replica, single, max(0, budget)), 0.0
        if allowed > 0 and budget > 0:
            return self._spend(replica, single, min(budget, allowed)), 0.0
        wait_s = self.reassigner.spent(replica.key, req.replica_id, 0) if allowed <= 0 else 0.0
        return self._replica_reply(replica, single, 0), wait_s

    @staticmethod
    def _knows_all(replica: Replica, part: p.ReplicaPart) -> bool:
        """The follower of ``part``, at the log's end, holds what an empty answer would
        bring: the high watermark, the start offset, the latest epoch entry."""
        plog, entries = replica.plog, replica.epochs.entries
        return (part.high_watermark == (plog.high_watermark or 0)
                and part.start_offset >= plog.start_offset and bool(entries)
                and (part.last_epoch, part.last_epoch_start) == entries[-1])

    def _replica_fetched(self, req: p.ReplicaFetch,
                         note: bool = True) -> tuple[Replica, int | None]:
        """Check a replica fetch and, with ``note``, note where the follower is (its log
        end moves the high watermark; caught up, it joins the ISR): only when the request
        arrives, never again for a parked one, whose follower may have moved since (a
        replica removed and added again, its copy emptied, once joined the ISR on its old
        request's offset). Return the replica and, for a throttled new replica, its
        allowance (else None)."""
        replica = self.leading(req.topic, req.partition)
        if req.leader_epoch < replica.leader_epoch:
            raise FencedLeaderEpoch(f"epoch {req.leader_epoch} is over: {req.topic}"
                                    f"[{req.partition}] is at epoch {replica.leader_epoch}")
        if req.leader_epoch > replica.leader_epoch:
            raise UnknownLeaderEpoch(f"this leader is at epoch {replica.leader_epoch}, "
                                     f"not yet {req.leader_epoch}: retry")
        if req.topic_id and req.topic_id != replica.topic_id:
            raise UnknownTopic(f"{req.topic}[{req.partition}] here is topic id "
                               f"{replica.topic_id}, not {req.topic_id}: that topic was "
                               "deleted")
        if req.replica_id not in replica.replicas or req.replica_id == self.id:
            raise BadRequest(f"broker {req.replica_id} is not a follower of {req.topic}"
                             f"[{req.partition}] (replicas {replica.replicas})")
        if req.offset > replica.plog.end_offset:
            raise OffsetOutOfRange(f"fetch from {req.offset} past the leader's end "
                                   f"{replica.plog.end_offset}: truncate by epoch first")
        if note and req.start_offset > replica.follower_start.get(req.replica_id, -1):
            replica.follower_start[req.replica_id] = req.start_offset
            self.broker.waiting.data_arrived(replica.key)  # a delete_records may wait
        if note and replica.follower_fetched(req.replica_id, req.offset, time.monotonic()):
            self._high_watermark_moved(replica)
        if note and replica.may_join_isr(req.replica_id):
            self._change_isr(replica, replica.isr + [req.replica_id])
        # a new replica once in sync is not held back (as in Kafka): acks=all waits for it
        allowed = None if req.replica_id in replica.isr else \
            self.reassigner.allowance(replica.key, req.replica_id, time.monotonic())
        return replica, allowed

    def _throttled_fetch(self, replica: Replica, req: p.ReplicaFetch, client: Client,
                         allowed: int) -> p.Reply | None:
        """A new replica of a throttled reassignment: at most its allowance (at least one
        batch once it is positive); while it is spent, the fetch waits for it to refill."""
        tp, follower = replica.key, req.replica_id

        def reply_now() -> p.ReplicaFetchReply:
            return self._spend(replica, req, max(1, min(req.max_bytes, allowed)))

        if allowed > 0:
            reply = reply_now()
            if reply.batches or req.max_wait_ms == 0:
                return reply
        wait_s = self.reassigner.spent(tp, follower, 0) if allowed <= 0 else 0.0
        wait_ms = max(1, min(req.max_wait_ms, int(wait_s * 1000) + 1)) if allowed <= 0 \
            else req.max_wait_ms

        def answer(final: bool) -> bool:
            nonlocal allowed
            if replica.role != LEADER or replica.leader_epoch != req.leader_epoch:
                self.broker.send_error(client, req.id, NotLeader("leadership moved"))
                return True
            allowed = self.reassigner.allowance(tp, follower, time.monotonic()) or 0
            if allowed <= 0 and not final:
                return False
            if allowed <= 0:  # still spent at the deadline: nothing this time
                self.broker.send(client, self._replica_reply(replica, req, 0))
                return True
            return self._answer_fetch(client, req, reply_now, final)
        # Woken by new data only when it may send some; else at the deadline.
        self.broker._park(client, wait_ms, answer, [replica.key] if allowed > 0 else [], None,
                          limited=False)
        return None

    def _spend(self, replica: Replica, req: p.ReplicaFetch,
               max_bytes: int) -> p.ReplicaFetchReply:
        """A throttled new replica's answer of at most ``max_bytes`` (at least a batch),
        counted against its allowance."""
        reply = self._replica_reply(replica, req, max_bytes)
        self.reassigner.spent(replica.key, req.replica_id, sum(len(b) for b in reply.batches))
        return reply

    def _answer_fetch(self, client: Client, req: p.ReplicaFetch,
                      read: Callable[[], p.ReplicaFetchReply], final: bool) -> bool:
        """A parked replica fetch's try: send what ``read`` gives if it holds batches (or
        at the deadline), or the error it raised; True once answered."""
        try:
            again = read()
        except RailError as exc:
            self.broker.send_error(client, req.id, exc)
            return True
        if again.batches or final:
            self.broker.send(client, again)
            return True
        return False

    def _replica_reply(self, replica: Replica, req: p.ReplicaFetch,
                       max_bytes: int | None = None) -> p.ReplicaFetchReply:
        plog = replica.plog
        # Below the start offset (records deleted while the follower was away): nothing,
        # and the start offset, from which the follower starts again.
        max_bytes = req.max_bytes if max_bytes is None else max_bytes
        # Every batch checked: a damaged one must not be copied (its CorruptLogError,
        # answered, makes this broker step aside: Broker.send_error, answer_parts).
        batches = (plog.read_all(req.offset, max_bytes, verify=True) if max_bytes > 0
                   and plog.start_offset <= req.offset < plog.end_offset else [])
        replica.sent_end[req.replica_id] = plog.end_offset
        return p.ReplicaFetchReply(
            id=req.id, topic=req.topic, partition=req.partition,
            leader_epoch=replica.leader_epoch, high_watermark=plog.high_watermark or 0,
            end_offset=plog.end_offset, start_offset=plog.start_offset,
            epochs=list(replica.epochs.entries),
            batches=[HEADER.pack(*b.header) + bytes(b.payload) for b in batches])

    def handle_offset_for_leader_epoch(self, req: p.OffsetForLeaderEpoch) -> p.Reply:
        replica = self.leading(req.topic, req.partition)
        if 0 <= req.leader_epoch < replica.leader_epoch:
            raise FencedLeaderEpoch(f"epoch {req.leader_epoch} is over: now "
                                    f"{replica.leader_epoch}")
        epoch, end = replica.epochs.end_offset(req.epoch, replica.plog.end_offset)
        return p.OffsetForLeaderEpochReply(id=req.id, epoch=epoch, end_offset=end)

    def _change_isr(self, replica: Replica, isr: list[int]) -> None:
        """Store a new ISR (compare-and-set) and only then act on it."""
        assert replica.state is not None
        isr = [b for b in replica.replicas if b in isr]
        state = PartitionState(leader=self.id, leader_epoch=replica.leader_epoch, isr=isr,
                               controller_epoch=replica.state.controller_epoch)
        try:
            version = self.store.set_state(replica.topic, replica.partition, state,
                                           replica.version)
        except StaleVersion:
            current, version = self.store.state(replica.topic, replica.partition)
            self._apply_state(replica.key, current, version)
            return
        log.info("%s[%d]: isr %s -> %s", replica.topic, replica.partition, replica.isr, isr)
        self._isr_changed(replica, state, version)

    def timers(self, now: float) -> None:
        self.next_timer = now + ISR_CHECK_S
        if self.withdrawn and self.store.connected:
            if not self._unregistered:
                self._unregister()
            if now >= self._probe_at:
                self._probe_storage(now)
        if self.fenced or not self.store.connected:
            return
        lag_s = self.config.replica_lag_time_ms / 1000
        for replica in list(self.replicas.values()):
            lagging = replica.lagging(now, lag_s)
            if lagging:
                try:
                    self._change_isr(replica, [b for b in replica.isr if b not in lagging])
                except (KazooException, ClusterError) as exc:
                    log.warning("cannot shrink the isr of %s[%d]: %r", *replica.key, exc)
        self.reassigner.tick(now)

    # -- a disk that cannot take writes ---------------------------------------------
    def storage_failed(self, why: str, cause: BaseException | None) -> None:
        """A write failed for the disk (full, read-only, an I/O error; a leader's append,
        a follower's, or a failed fsync: ``cause`` None): withdraw.  Step down from every
        leadership at once and delete this broker's registration, so that the controller
        moves each partition led here to an in-sync replica elsewhere and drops this broker
        from the ISRs, as for a dead broker; a controller also gives up that role.  Kafka
        halts a broker whose only log directory failed; this one stays up (the same
        ZooKeeper session) and joins again once a test write of 1 MiB succeeds
        (``_probe_storage``), as a follower that truncates by epoch and catches up like a
        restarted broker."""
        code = getattr(cause, "errno", None)
        if self.withdrawn or (cause is not None and code not in DISK_ERRNOS):
            return
        log.error("withdrawing from the cluster: %s; every leadership here moves to another "
                  "in-sync replica, and this broker joins again once its data dir takes a "
                  "test write (every %.0f s)", why, STORAGE_PROBE_S)
        self.withdrawn, self.fenced = why, True
        self._probe_at = time.monotonic() + STORAGE_PROBE_S
        for replica in self.replicas.values():
            if replica.role == LEADER:
                self._step_down(replica)
        self.controller_epoch = None  # it holds no role: another broker becomes controller
        self._unregister()

    def damaged(self, exc: CorruptLogError) -> None:
        """A batch of this broker's copy of a partition failed its CRC check when read (bit
        rot, a bad sector).  Where another in-sync replica holds the partition, its copy is
        good (each batch's CRC was checked when it was replicated there): this broker
        withdraws as for a failing disk (``storage_failed``: every partition led here moves
        to an in-sync replica elsewhere) and cuts its copy back to the damaged segment's
        first offset, so that when it joins again it copies that segment and everything
        after it from the new leader.  Alone with the partition, it can only report the
        damage to each reader (STORAGE_ERROR naming the file and byte) and keep serving
        what lies before it."""
        log_path = Path(exc.path)
        tp = (log_path.parent.parent.name, int(log_path.parent.name))
        replica = self.replicas.get(tp)
        if replica is None or replica.role != LEADER:
            return  # it serves no reads of it (it has stepped aside for this damage already)
        others = [b for b in replica.isr if b != self.id and b in self.brokers]
        if not others:
            if replica.storage_error != exc.message:
                log.error("%s[%d]: %s; no other in-sync replica holds a good copy: each read "
                          "reaching it fails (delete_records past it to go on)", *tp,
                          exc.message)
            replica.storage_error = exc.message
            return
        self.storage_failed(f"{tp[0]}[{tp[1]}]: {exc.message}", None)
        start = int(log_path.stem)
        try:
            replica.plog.truncate_to(start)
        except StorageError as cut:
            log.error("%s[%d]: cannot cut the damaged copy back to %d: %s", *tp, start,
                      cut.message)
            return
        replica.epochs.truncate(replica.plog.end_offset)
        log.warning("%s[%d]: cut back to offset %d; the in-sync replicas %s hold the rest, "
                    "copied again once this broker joins", *tp, replica.plog.end_offset,
                    others)

    def _unregister(self) -> None:
        """Delete the registration and give up the controller's znode if held; while
        ZooKeeper is away, again at each timer."""
        try:
            self.store.resign_controller()
            self.store.unregister()
            self._unregistered = True
        except KazooException as exc:
            self._unregistered = False
            log.warning("cannot delete this broker's registration now: %r", exc)

    def _probe_storage(self, now: float) -> None:
        """Write, fsync and remove 1 MiB in the data dir; once that works, register again
        and take up every replica as the cluster's state says (as after a lost session)."""
        self._probe_at = now + STORAGE_PROBE_S
        path = Path(self.broker.config.data_dir) / ".storage-probe"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, bytes(PROBE_BYTES))  # a full disk raises ENOSPC part-way
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if not self._unregistered:
            return  # the old registration is still there: delete it first
        try:
            self.store.register(*self._endpoints)
        except (KazooException, ClusterError) as exc:
            log.warning("the data dir takes writes again, but registering failed: %r", exc)
            return
        log.warning("the data dir takes writes again (after: %s): joining the cluster again",
                    self.withdrawn)
        self.withdrawn, self.fenced, self._lost = "", False, False
        try:
            self._refresh()
        except (KazooException, ClusterError) as exc:
            # The connection went meanwhile: its return (CONNECTED) re-reads the state.
            log.warning("re-reading the cluster's state failed: %r", exc)

    # -- topics -----------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int | None,
                     overrides: dict[str, Any]) -> int:
        """Write the topic and its replica assignment to ZooKeeper; every broker holding
        a replica creates it locally when its watch fires.  Returns the partition count."""
        check_name(name)
        if not self.store.connected:
            raise NotController("this broker has lost its ZooKeeper connection: create the "
                                "topic through another broker, or retry")
        if partitions is not None:
            overrides = {**overrides, "partitions": partitions}
        try:
            config = topic_config(self.broker.config.topic_defaults, overrides)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        live = sorted(self.brokers)
        factor = config.replication_factor or min(3, len(live))
        if not 1 <= factor <= len(live):
            raise BadRequest(f"replication_factor {factor} needs as many live brokers; "
                             f"{len(live)} are live ({live})")
        min_isr = config.min_insync_replicas or (2 if factor >= 2 else 1)
        if min_isr > factor:
            raise BadRequest(f"min_insync_replicas {min_isr} is more than the "
                             f"replication_factor {factor}")
        assignment = [[live[(i + k) % len(live)] for k in range(factor)]
                      for i in range(config.partitions)]
        record = TopicRecord(config={**overrides, "replication_factor": factor,
                                     "min_insync_replicas": min_isr}, replicas=assignment,
                             topic_id=uuid.uuid4().hex)
        states = [PartitionState(leader=r[0], leader_epoch=0, isr=list(r),
                                 controller_epoch=max(self.controller_epoch or 0, 0))
                  for r in assignment]
        try:
            self.store.create_topic(name, record, states)
        except ClusterError as exc:
            if "already exists" in str(exc):
                marked = " (marked for deletion: retry once it is gone)" if (
                    name in self.deleting) else ""
                raise TopicExists(f"topic {name!r} already exists{marked}") from exc
            raise
        return config.partitions

    def led_here(self, topic: str) -> bool:
        """Whether this broker's ``metadata`` names a leader for every partition of
        ``topic`` (what a client needs to route its first produce)."""
        record = self.topic_records.get(topic)
        return record is not None and all(
            self.named_leader(topic, index) >= 0 for index in range(len(record.replicas)))

    def named_leader(self, topic: str, partition: int) -> int:
        """The leader this broker's ``metadata`` names for ``topic[partition]`` (-1: none
        known, or not to be claimed: see ``partition_info``)."""
        info = p.PartitionInfo(partition=partition, start_offset=-1, end_offset=-1,
                               size_bytes=0)
        self.partition_info(topic, info)
        return info.leader

    def partition_info(self, topic: str, info: p.PartitionInfo) -> None:
        replica = self.replicas.get((topic, info.partition))
        if replica is not None and replica.state is not None:
            leader = replica.state.leader
            if self.fenced or (leader == self.id and replica.role != LEADER):
                leader = -1  # what ZooKeeper says now is unknown here: never claim to lead
            info.leader = leader
            info.leader_epoch = replica.state.leader_epoch
            info.replicas = list(replica.replicas)
            info.isr = list(replica.state.isr)
            return
        state = self.other_states.get((topic, info.partition))
        record = self.topic_records.get(topic)
        if state is not None and record is not None and info.partition < len(record.replicas):
            # a partition of this topic that only other brokers hold
            info.leader = -1 if self.fenced else state.leader
            info.leader_epoch = state.leader_epoch
            info.replicas = list(record.replicas[info.partition])
            info.isr = list(state.isr)

    def broker_infos(self) -> list[p.BrokerInfo]:
        return [p.BrokerInfo(id=b.id, api=b.api, ingest=b.ingest)
                for b in sorted(self.brokers.values(), key=lambda b: b.id)]

    # -- the controller ---------------------------------------------------------------
    def _elect_controller(self) -> None:
        if self.controller_epoch is not None:
            return
        epoch = None if self.withdrawn else self.store.try_become_controller()
        if epoch is None:
            current = self.store.controller()
            self.controller_id = -1 if current is None else current
            return
        self.controller_epoch = epoch
        self.controller_epoch_version = self.store.controller_epoch_version()
        self.controller_id = self.id
        log.info("broker %d is the controller (epoch %d)", self.id, epoch)
        self._elect_leaders()
        admin.complete_deletions(self)
        self.reassigner.resume()

    def _elect_leaders(self) -> None:
        """Give every partition whose leader is gone a leader from its live ISR (never an
        out-of-sync replica); one without a live ISR member goes offline until one returns.
        Where the leader lives, drop the followers that are gone from its ISR (Kafka's
        controller does so on a broker's failure): else every ``acks=all`` produce there
        waits for them until its leader drops them, ``replica_lag_time_ms`` later."""
        assert self.controller_epoch is not None
        live = set(self.brokers)
        for name in self.store.topics():
            record = self.store.topic(name)
            if record is None:
                continue
            for index in range(len(record.replicas)):
                state, version = self.store.state(name, index)
                isr = [b for b in state.isr if b in live]
                if state.leader in live:
                    if isr == state.isr:
                        continue
                    new = PartitionState(leader=state.leader, leader_epoch=state.leader_epoch,
                                         isr=isr, controller_epoch=self.controller_epoch)
                elif alive := [b for b in record.replicas[index] if b in isr]:
                    new = PartitionState(leader=alive[0], leader_epoch=state.leader_epoch + 1,
                                         isr=isr, controller_epoch=self.controller_epoch)
                elif state.leader != -1:
                    new = PartitionState(leader=-1, leader_epoch=state.leader_epoch + 1,
                                         isr=state.isr, controller_epoch=self.controller_epoch)
                else:
                    continue
                try:
                    self.store.set_state(name, index, new, version,
                                         self.controller_epoch_version)
                except StaleVersion as exc:  # changed meanwhile (by its leader, say)
                    log.warning("controller: %s", exc)
                    continue
                if new.leader == state.leader:
                    log.info("controller: %s[%d] isr %s -> %s (gone: %s)", name, index,
                             state.isr, new.isr, sorted(set(state.isr) - live))
                else:
                    log.info("controller: %s[%d] leader %d -> %d at epoch %d (isr %s)", name,
                             index, state.leader, new.leader, new.leader_epoch, new.isr)
