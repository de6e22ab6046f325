"""Moving a partition's replicas to other brokers, and preferred-leader election, the way
Kafka's controller does them with ZooKeeper (kafka-reassign-partitions.sh,
kafka-leader-election.sh, ``auto.leader.rebalance.enable``).

- **A reassignment** is asked of any broker (``reassign_partitions``): it checks the plan
  and writes one znode per partition, ``/admin/reassign_partitions/<topic>:<p>``, all in
  one transaction (a partition already being moved fails the whole plan).  The
  controller, which watches those znodes, carries each one out in steps that are all
  read back from ZooKeeper, so a new controller resumes where the last one stopped:
  (a) the topic's replica list becomes old + new replicas, so the new ones start
  following the leader and catching up; (b) it waits until every new replica is in the
  ISR; (c)+(d) in one transaction checked against the controller epoch: the replica list
  becomes the new one, the ISR what of it is in the new set, the leader moves to the
  first in-sync new replica (leader epoch + 1) if it is not in the new set, and the
  znode goes.  Each broker, seeing the record change (``assignment_changed``), takes up
  the replicas it gained and drops those it lost: it stops following and deletes its copy.
  A reassignment may carry a throttle: every broker keeps a token bucket per new replica
  of such a partition, and as its leader sends it at most that many bytes a second.
  A reassignment marked cancelled (``cancel_reassignments``) goes back instead: the list
  becomes the original one at once, the leader moving to an in-sync original replica if
  a new one leads.
- **A preferred-leader election** (``elect_leaders``, on the controller) makes the first
  replica of a partition's list its leader (leader epoch + 1) where it is live and in
  sync.  The controller's timer does the same for every broker whose share of
  partitions led by another broker than their preferred one is above
  ``leader_imbalance_per_broker_percent`` (``auto_leader_rebalance``).

Runs on the broker loop; every ZooKeeper write is compare-and-set, the controller's checked
against its epoch.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec
from kazoo.exceptions import KazooException

from brokerd import protocol as p
from brokerd.cluster.epochs import LeaderEpochs
from brokerd.cluster.topic_id import read_topic_id
from brokerd.cluster.zk import (
    ClusterError,
    PartitionState,
    PendingReassignment,
    StaleVersion,
    TopicRecord,
)
from brokerd.errors import (
    BadRequest,
    NotController,
    StorageError,
    UnknownPartition,
    UnknownTopic,
)
from brokerd.topics import check_name

if TYPE_CHECKING:
    from brokerd.cluster.node import Cluster

log = logging.getLogger("brokerd.cluster")
TP = tuple[str, int]
LOOK_AGAIN_S = 5.0


class Reassigner:
    """The controller's reassignment and election logic, and every broker's side of a
    changed replica list."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.pending: dict[TP, PendingReassignment] = {}
        """As controller: the reassignments in progress, as ZooKeeper holds them."""
        self._looked: dict[TP, float] = {}
        """When the controller last read each one's record and state from ZooKeeper."""
        config = cluster.config
        self.rebalance_s = max(config.leader_imbalance_check_interval_ms, 100) / 1000
        self.next_rebalance = time.monotonic() + self.rebalance_s
        self.throttles: dict[TP, tuple[frozenset[int], int]] = {}
        """Every broker's: the new replicas of each throttled reassignment, and the rate."""
        self._buckets: dict[tuple[TP, int], list[float]] = {}  # [bytes allowed, at]

    # -- requests -----------------------------------------------------------------------
    def handle(self, req: p.ReassignPartitions | p.ListReassignments | p.ElectLeaders
               | p.CancelReassignments) -> p.Reply:
        if not self.store.connected:
            raise NotController(f"broker {self.cluster.id} has lost its ZooKeeper "
                                "connection: send it to another broker, or retry")
        if isinstance(req, p.ReassignPartitions):
            self.request(req.partitions)
            return p.ReassignPartitionsReply(id=req.id, partitions=req.partitions)
        if isinstance(req, p.CancelReassignments):
            return p.CancelReassignmentsReply(id=req.id, partitions=self.cancel(req.partitions))
        if isinstance(req, p.ListReassignments):
            return p.ListReassignmentsReply(id=req.id, reassignments=[
                _describe(tp, pending) for tp, pending in sorted(self.store.reassignments().items())])
        return p.ElectLeadersReply(id=req.id, partitions=self.elect(req.topic, req.partition))

    def request(self, plan: list[p.Reassignment]) -> None:
        """Check ``plan`` whole, then start it (all or nothing)."""
        live = set(self.cluster.brokers)
        started: dict[TP, PendingReassignment] = {}
        records: dict[str, TopicRecord] = {}
        for item in plan:
            tp = (item.topic, item.partition)
            if item.topic not in records:
                records[item.topic] = self._record(item.topic)
            record = records[item.topic]
            if not 0 <= item.partition < len(record.replicas):
                raise UnknownPartition(f"topic {item.topic!r} has partitions "
                                       f"0..{len(record.replicas) - 1}, not {item.partition}")
            if tp in started:
                raise BadRequest(f"{item.topic}[{item.partition}] is named twice in the plan")
            if not item.replicas:
                raise BadRequest(f"{item.topic}[{item.partition}]: the replica list is empty")
            if len(set(item.replicas)) != len(item.replicas):
                raise BadRequest(f"{item.topic}[{item.partition}]: the replica list "
                                 f"{item.replicas} names a broker twice")
            unknown = sorted(set(item.replicas) - live)
            if unknown:
                raise BadRequest(f"{item.topic}[{item.partition}]: no live broker has id "
                                 f"{', '.join(map(str, unknown))} (live: {sorted(live)})")
            min_isr = int(record.config.get("min_insync_replicas") or 1)
            if len(item.replicas) < min_isr:
                raise BadRequest(f"{item.topic}[{item.partition}]: {len(item.replicas)} "
                                 f"replica(s), fewer than its min_insync_replicas={min_isr}")
            started[tp] = PendingReassignment(replicas=list(item.replicas),
                                              original=list(record.replicas[item.partition]),
                                              throttle=item.throttle)
        # The same move asked again while it runs changes its throttle (as Kafka's tool
        # does when the plan is executed again): another move of it is refused.
        rethrottled: dict[TP, tuple[PendingReassignment, int]] = {}
        for tp, asked in started.items():
            found = self.store.reassignment(*tp)
            if found is None:
                continue
            running, version = found
            if running.replicas != asked.replicas or running.cancelled:
                raise BadRequest(f"{tp[0]}[{tp[1]}] is being reassigned already (to "
                                 f"{running.replicas}{', cancelled' if running.cancelled else ''})"
                                 ": wait for it to complete (rail cluster reassign --list), or "
                                 "ask the same replicas again to change its throttle")
            rethrottled[tp] = (msgspec.structs.replace(running, throttle=asked.throttle), version)
        for tp in rethrottled:
            del started[tp]
        try:
            self.store.start_reassignments(started, rethrottled)
        except ClusterError as exc:
            raise BadRequest(str(exc)) from exc
        if started:
            log.info("reassignment asked: %s", ", ".join(
                f"{t}[{i}] {r.original} -> {r.replicas}" for (t, i), r in started.items()))
        if rethrottled:
            log.info("reassignment throttle changed: %s", ", ".join(
                f"{t}[{i}] {r.throttle or 'no limit'}" for (t, i), (r, _) in rethrottled.items()))

    def _record(self, name: str) -> TopicRecord:
        check_name(name)
        record = self.store.topic(name)
        if record is None or name in self.cluster.deleting:
            raise UnknownTopic(f"unknown topic {name!r}" +
                               (" (it is being deleted)" if record else ""))
        return record

    # -- every broker: throttles ----------------------------------------------------------
    def changed(self) -> None:
        """The reassignments changed (or this broker joined): take up their throttles and,
        as controller, carry them on."""
        pending = self.store.reassignments(watch=True)
        self.throttles = {tp: (frozenset(b for b in r.replicas if b not in r.original),
                               r.throttle)
                          for tp, r in pending.items() if r.throttle > 0 and not r.cancelled}
        self._buckets = {key: bucket for key, bucket in self._buckets.items()
                         if key[0] in self.throttles}
        for (name, partition), (adding, rate) in self.throttles.items():
            log.debug("%s[%d]: new replicas %s copy at most %d B/s", name, partition,
                      sorted(adding), rate)
        self.resume(pending)

    def allowance(self, tp: TP, follower: int, now: float) -> int | None:
        """Bytes the leader of ``tp`` may send ``follower`` now: None if it is not
        throttled; <= 0 while its allowance is spent (it refills at the rate, up to one
        second's worth)."""
        throttled = self.throttles.get(tp)
        if throttled is None or follower not in throttled[0]:
            return None
        rate = throttled[1]
        bucket = self._buckets.get((tp, follower))
        if bucket is None:
            bucket = self._buckets[(tp, follower)] = [float(rate), now]
        bucket[0] = min(float(rate), bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        return int(bucket[0])

    def spent(self, tp: TP, follower: int, sent: int) -> float:
        """Count ``sent`` bytes against ``follower``'s allowance; the seconds until it is
        positive again."""
        bucket = self._buckets.get((tp, follower))
        if bucket is None:
            return 0.0
        bucket[0] -= sent
        return max(0.0, -bucket[0]) / self.throttles[tp][1] if bucket[0] <= 0 else 0.0

    # -- the controller: reassignments ----------------------------------------------------
    def resume(self, pending: dict[TP, PendingReassignment] | None = None) -> None:
        """As controller (elected, or told the znodes changed): read the reassignments in
        progress and move each as far as it can go now."""
        if self.cluster.controller_epoch is None:
            return
        self.pending = self.store.reassignments(watch=True) if pending is None else pending
        self._looked = {tp: at for tp, at in self._looked.items() if tp in self.pending}
        self._progress_all()

    def tick(self, now: float) -> None:
        """The controller's timer: reassignments waiting for their new replicas to catch
        up, and the automatic preferred-leader rebalance."""
        if self.cluster.controller_epoch is None:
            return
        self._progress_all()
        if self.cluster.config.auto_leader_rebalance and now >= self.next_rebalance:
            self.next_rebalance = now + self.rebalance_s
            try:
                self.rebalance()
            except (KazooException, ClusterError) as exc:
                log.warning("controller: leader rebalance postponed: %r", exc)

    def _progress_all(self) -> None:
        now = time.monotonic()
        for tp, pending in list(self.pending.items()):
            if self._catching_up(tp, pending) and now < self._looked.get(tp, 0) + LOOK_AGAIN_S:
                continue
            self._looked[tp] = now
            try:
                if self._progress(tp, pending):
                    del self.pending[tp]
                    self._looked.pop(tp, None)
            except (KazooException, ClusterError) as exc:  # a lost compare-and-set, say
                log.warning("controller: reassignment of %s[%d] postponed: %r", *tp, exc)

    def _catching_up(self, tp: TP, pending: PendingReassignment) -> bool:
        """Whether the watches' copies say the new replicas are listed but not all in
        the ISR yet: then the timer need not read ZooKeeper for ``tp`` (it still does
        every LOOK_AGAIN_S, should a watch have been missed)."""
        cluster = self.cluster
        record = cluster.topic_records.get(tp[0])
        held = cluster.replicas.get(tp)
        state = held.state if held is not None else cluster.other_states.get(tp)
        return (not pending.cancelled and record is not None and tp[1] < len(record.replicas)
                and state is not None
                and all(b in record.replicas[tp[1]] for b in pending.replicas)
                and any(b not in state.isr for b in pending.replicas))

    def _progress(self, tp: TP, pending: PendingReassignment) -> bool:
        """One step of a reassignment, from what ZooKeeper holds; True once it is over."""
        cluster, (name, partition) = self.cluster, tp
        epoch_version = cluster.controller_epoch_version
        found = self.store.topic_versioned(name)
        if found is None or name in cluster.deleting or partition >= len(found[0].replicas):
            log.warning("controller: %s[%d] is gone: its reassignment is dropped", *tp)
            self.store.drop_reassignment(name, partition)
            return True
        record, version = found
        asked = self.store.reassignment(name, partition)  # as it is now: cancelled, say
        if asked is None:
            return True  # finished by an earlier controller's last step
        pending, reassign_version = asked
        self.pending[tp] = pending
        current = record.replicas[partition]
        # Cancelled: back to the original list at once, without waiting for all of it to
        # be in sync (as Kafka's cancel); the leader moves if a new replica leads.
        target = pending.original if pending.cancelled else pending.replicas
        adding = [b for b in target if b not in current]
        if adding and not pending.cancelled:  # (a) the new replicas join the list
            grown = _with_replicas(record, partition, current + adding)
            self.store.set_assignment(name, grown, version, epoch_version)
            log.info("controller: %s[%d] replicas %s -> %s (catching up)", *tp, current,
                     grown.replicas[partition])
            return False
        state, state_version = self.store.state(name, partition)
        if not pending.cancelled and any(b not in state.isr for b in target):
            return False  # (b) not all caught up yet
        new = self._state_for(state, target)  # (c) the leader moves if it leaves
        if new is None:
            return False  # none of them in sync and live: only the ISR holds everything
        final = _with_replicas(record, partition, list(target))
        self.store.finish_reassignment(name, partition, final, version, new, state_version,
                                       epoch_version, reassign_version)  # (d)
        log.info("controller: %s[%d] %s %s -> %s, leader %d at epoch %d", *tp,
                 f"reassignment to {pending.replicas} cancelled:" if pending.cancelled
                 else "reassigned", current, target, new.leader, new.leader_epoch)
        return True

    def _state_for(self, state: PartitionState, target: list[int]) -> PartitionState | None:
        """The partition's state once its replicas are ``target``: the ISR those of them
        in it; the leader the same if it stays and lives, else the first of them in sync
        and live (leader epoch + 1); None if there is none (wait)."""
        cluster = self.cluster
        live, controller_epoch = set(cluster.brokers), cluster.controller_epoch or 0
        isr = [b for b in target if b in state.isr]
        if state.leader in target and state.leader in live:
            return msgspec.structs.replace(state, isr=isr, controller_epoch=controller_epoch)
        candidates = [b for b in isr if b in live]
        if not candidates:
            return None
        return PartitionState(leader=candidates[0], leader_epoch=state.leader_epoch + 1,
                              isr=isr, controller_epoch=controller_epoch)

    def cancel(self, partitions: list[p.PartitionRef]) -> list[p.Cancellation]:
        """Mark the reassignments of ``partitions`` (none named: all in progress)
        cancelled; the controller carries the cancellation out."""
        for x in partitions:
            check_name(x.topic)  # never a path: it names a znode
        named = [(x.topic, x.partition) for x in partitions] or \
            sorted(self.store.reassignments())
        out = []
        for name, partition in named:
            result = p.Cancellation(topic=name, partition=partition)
            if not self.store.cancel_reassignment(name, partition):
                result.code = "NOT_IN_PROGRESS"
                result.message = f"{name}[{partition}] is not being reassigned (now)"
            out.append(result)
        done = [f"{x.topic}[{x.partition}]" for x in out if not x.code]
        if done:
            log.info("reassignment cancel asked: %s", ", ".join(done))
        return out

    # -- every broker: a changed replica list -----------------------------------------------
    def assignment_changed(self, name: str, record: TopicRecord) -> None:
        """Take up ``record``'s replica lists: a leader learns its new followers, a
        replica this broker lost stops and its copy is deleted (the whole topic's when
        this broker holds none of it any more)."""
        cluster = self.cluster
        for index, replicas in enumerate(record.replicas):
            tp = (name, index)
            replica = cluster.replicas.get(tp)
            if cluster.id in replicas:
                cluster.other_states.pop(tp, None)  # a replica now: its state events apply
                if replica is not None and replica.replicas != replicas:
                    replica.replicas = list(replicas)
            elif replica is not None:
                del cluster.replicas[tp]
                cluster._step_down(replica)
                cluster.fetcher.unfollow(tp)
                cluster.other_states[tp] = self.store.state(*tp)[0]
                log.info("%s[%d]: no longer a replica here (replicas %s)", *tp, replicas)
        local = cluster.broker.topics.topics.get(name)
        # only a copy of this very topic (its id), never one this broker cannot place
        if local is None or any(read_topic_id(plog.directory) != record.topic_id
                                for plog in local.partitions):
            return
        try:
            if not any(cluster.id in r for r in record.replicas):
                log.info("topic %s has no replica here any more: deleting the local copy",
                         name)
                cluster._checked.discard(name)
                cluster.broker.topics.delete(name)
                return
            for index, plog in enumerate(local.partitions):
                if index < len(record.replicas) and cluster.id not in record.replicas[index] \
                        and plog.end_offset > plog.start_offset:
                    log.info("%s[%d]: no longer a replica here: emptying the local copy",
                             name, index)
                    plog.truncate_to(plog.start_offset)
                    LeaderEpochs(plog.directory).truncate(plog.start_offset)
        except StorageError as exc:  # tried again when the topic's record is next seen
            log.error("%s: cannot delete a copy this broker no longer holds: %s", name,
                      exc.message)

    # -- the controller: preferred leaders -------------------------------------------------
    def elect(self, topic: str | None, partition: int | None) -> list[p.Election]:
        """Preferred-leader election of one partition, a topic's, or every partition."""
        cluster = self.cluster
        if cluster.controller_epoch is None:
            raise NotController(f"broker {cluster.id} is not the controller (broker "
                                f"{cluster.controller_id} is): send elect_leaders there")
        if topic is None:
            if partition is not None:
                raise BadRequest("a partition without its topic")
            chosen = [(n, r) for n in self.store.topics()
                      if n not in cluster.deleting and (r := self.store.topic(n)) is not None]
        else:
            chosen = [(topic, self._record(topic))]
        if partition is not None and not 0 <= partition < len(chosen[0][1].replicas):
            raise UnknownPartition(f"topic {topic!r} has partitions "
                                   f"0..{len(chosen[0][1].replicas) - 1}, not {partition}")
        pending = self.store.reassignments()
        return [self._elect_preferred((name, index), record.replicas[index], pending)
                for name, record in chosen for index in range(len(record.replicas))
                if partition is None or index == partition]

    def _elect_preferred(self, tp: TP, replicas: list[int],
                         pending: dict[TP, PendingReassignment]) -> p.Election:
        cluster = self.cluster
        preferred = replicas[0]
        state, version = self.store.state(*tp)
        result = p.Election(topic=tp[0], partition=tp[1], leader=state.leader)
        if state.leader == preferred:
            return result
        if tp in pending:
            result.code, result.message = "REASSIGNMENT_IN_PROGRESS", "being reassigned"
        elif preferred not in cluster.brokers:
            result.code = "PREFERRED_NOT_AVAILABLE"
            result.message = f"preferred replica {preferred} is not live"
        elif preferred not in state.isr:
            result.code = "PREFERRED_NOT_AVAILABLE"
            result.message = f"preferred replica {preferred} is not in sync (isr {state.isr})"
        else:
            new = PartitionState(leader=preferred, leader_epoch=state.leader_epoch + 1,
                                 isr=state.isr, controller_epoch=cluster.controller_epoch or 0)
            try:
                self.store.set_state(*tp, new, version, cluster.controller_epoch_version)
            except StaleVersion as exc:
                result.code, result.message = "CONFLICT", f"{exc}: retry"
                return result
            log.info("controller: %s[%d] preferred leader %d elected at epoch %d (was %d)",
                     *tp, preferred, new.leader_epoch, state.leader)
            result.leader = preferred
        return result

    def rebalance(self) -> None:
        """Kafka's auto leader rebalance: for each broker whose share of partitions not led
        by it, of those it is the preferred leader of, is above the threshold, elect it
        where it is in sync.  Counted from the records and states this broker keeps
        from its watches (no ZooKeeper read per partition on the loop); each election
        reads the state again before its compare-and-set."""
        cluster = self.cluster
        threshold = cluster.config.leader_imbalance_per_broker_percent / 100
        by_preferred: dict[int, list[tuple[TP, list[int], int]]] = {}
        for name, record in list(cluster.topic_records.items()):
            if name in cluster.deleting:
                continue
            for index, replicas in enumerate(record.replicas):
                tp = (name, index)
                held = cluster.replicas.get(tp)
                state = held.state if held is not None else cluster.other_states.get(tp)
                if replicas and state is not None:
                    by_preferred.setdefault(replicas[0], []).append((tp, replicas,
                                                                     state.leader))
        pending: dict[TP, PendingReassignment] | None = None
        for broker, partitions in by_preferred.items():
            elsewhere = [(tp, r) for tp, r, leader in partitions if leader != broker]
            if broker not in cluster.brokers or len(elsewhere) <= threshold * len(partitions):
                continue
            log.info("controller: broker %d leads %d of the %d partitions it prefers: "
                     "electing it", broker, len(partitions) - len(elsewhere), len(partitions))
            if pending is None:
                pending = self.store.reassignments()
            for tp, replicas in elsewhere:
                self._elect_preferred(tp, replicas, pending)


def _with_replicas(record: TopicRecord, partition: int, replicas: list[int]) -> TopicRecord:
    lists = [list(r) for r in record.replicas]
    lists[partition] = replicas
    return msgspec.structs.replace(record, replicas=lists)


def _describe(tp: TP, pending: PendingReassignment) -> p.Reassignment:
    return p.Reassignment(topic=tp[0], partition=tp[1], replicas=pending.replicas,
                          adding=[b for b in pending.replicas if b not in pending.original],
                          removing=[b for b in pending.original if b not in pending.replicas],
                          cancelled=pending.cancelled, throttle=pending.throttle)
