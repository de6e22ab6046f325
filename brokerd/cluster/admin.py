"""Topic administration in a cluster: ``delete_topic``, ``create_partitions`` and
``delete_records``, the way Kafka (with ZooKeeper) does them.

- **delete_topic**: any broker marks the topic in ZooKeeper (``/admin/delete_topics/<name>``,
  holding its topic id) and answers at once; the deletion goes on without the client.
  Each broker watching the marks stops leading and following the topic, deletes its
  local copy and acknowledges (``/admin/delete_topics/<name>/<broker id>``); the controller
  removes the topic's znodes and the mark once every *live* replica broker has
  acknowledged.  Each group coordinator writes tombstones for the committed offsets of
  the topic it holds.  A broker that was down deletes its copy when it comes back and finds
  the topic gone, or created again under another topic id (``node._local_copy``).
- **create_partitions**: any broker adds the partitions to the topic's record by
  compare-and-set, with their states, in one transaction (replicas dealt round robin over
  the live brokers, as ``create_topic``); each broker's watch on the record takes them up.
- **delete_records**: only the partition's leader moves its start offset (at most to its
  high watermark); followers move theirs up to the leader's, which travels in every
  ``replica_fetch`` answer (Kafka's log start offset in fetch responses), and say where
  theirs is in their next ``replica_fetch``; the leader answers once every in-sync
  replica's start has reached the new one (Kafka's low watermark).

Runs on the broker loop; ZooKeeper calls are bounded by the session timeout.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from brokerd import protocol as p
from brokerd.cluster.coordinator import OFFSETS_TOPIC
from brokerd.cluster.replica import LEADER, Replica
from brokerd.cluster.zk import PartitionState, StaleVersion, TopicRecord
from brokerd.errors import (
    BadRequest,
    NotController,
    NotEnoughReplicas,
    NotLeader,
    OffsetOutOfRange,
    StorageError,
    UnknownPartition,
    UnknownTopic,
)
from brokerd.topics import check_name

if TYPE_CHECKING:
    from brokerd.cluster.node import Cluster
    from brokerd.waiters import Client

log = logging.getLogger("brokerd.cluster")
CAS_TRIES = 5


def _record(cluster: Cluster, name: str) -> tuple[TopicRecord, int]:
    """The topic's record and version, for a request: checked name, known topic, not
    being deleted, ZooKeeper reachable."""
    check_name(name)
    if not cluster.store.connected:
        raise NotController("this broker has lost its ZooKeeper connection: send it to "
                            "another broker, or retry")
    found = cluster.store.topic_versioned(name)
    if found is None or name in cluster.deleting:
        raise UnknownTopic(f"unknown topic {name!r}: create it first (rail topics create)"
                           + (" (it is being deleted)" if found else ""))
    return found


def refuse_offsets_topic(name: str, what: str) -> None:
    """Clients cannot change ``__rail_offsets`` (as Kafka refuses appends to and record
    deletion from its internal topics): only the groups' coordinators write it."""
    if name == OFFSETS_TOPIC:
        raise BadRequest(f"{OFFSETS_TOPIC} holds the groups' committed offsets: {what}")


# -- delete_topic -------------------------------------------------------------------------
def delete_topic(cluster: Cluster, name: str) -> None:
    """Mark ``name`` for deletion; the brokers and the controller do the rest."""
    refuse_offsets_topic(name, "it cannot be deleted (delete_group removes a group's)")
    record, _ = _record(cluster, name)
    cluster.store.mark_for_deletion(name, record.topic_id)
    cluster.deleting[name] = record.topic_id
    log.info("topic %s (id %s) marked for deletion", name, record.topic_id)


def apply_deletions(cluster: Cluster) -> None:
    """The marks changed (or the session is back): delete this broker's copy of every
    marked topic and acknowledge it; as controller, finish the deletions that can be."""
    cluster.deleting = cluster.store.marked_for_deletion()
    for name in cluster.deleting:
        cluster.group_offsets.forget_topic(name)
        record = cluster.store.topic(name)
        holds = name in cluster.broker.topics.topics or any(
            tp[0] == name for tp in cluster.replicas)
        if holds:
            cluster.drop_topic(name)
            log.info("deleted the local copy of topic %s", name)
        if record is not None and any(cluster.id in r for r in record.replicas):
            cluster.store.ack_deletion(name)
    complete_deletions(cluster)


def complete_deletions(cluster: Cluster) -> None:
    """As controller: remove the znodes of each marked topic once every live broker
    holding one of its replicas has deleted its copy."""
    if cluster.controller_epoch is None:
        return
    live = set(cluster.brokers)
    for name in cluster.store.marked_for_deletion():
        acks = cluster.store.deletion_acks(name)
        record = cluster.store.topic(name)
        if record is not None:
            waiting = {b for r in record.replicas for b in r if b in live} - acks
            if waiting:
                log.info("controller: topic %s waits for brokers %s to delete their copy",
                         name, sorted(waiting))
                continue
        try:
            cluster.store.remove_topic(name, cluster.controller_epoch_version)
        except StaleVersion as exc:
            log.warning("controller: %s", exc)
            continue
        log.info("controller: topic %s deleted", name)


# -- create_partitions --------------------------------------------------------------------
def create_partitions(cluster: Cluster, name: str, count: int) -> int:
    """Give ``name`` ``count`` partitions in all; the new ones are led by their first
    replica at epoch 0.  Returns ``count``."""
    refuse_offsets_topic(name, "its partition count decides which partition holds each "
                         "group's offsets, so it cannot grow")
    for _ in range(CAS_TRIES):
        record, version = _record(cluster, name)
        have = len(record.replicas)
        if count <= have:
            raise BadRequest(f"topic {name!r} has {have} partition(s): give a larger count "
                             f"(partitions only grow), not {count}")
        live = sorted(cluster.brokers)
        factor = len(record.replicas[0]) if record.replicas else 1
        if factor > len(live):
            raise BadRequest(f"{name!r} has {factor} replicas per partition; only "
                             f"{len(live)} brokers are live ({live}): retry when more are")
        added = [[live[(i + k) % len(live)] for k in range(factor)] for i in range(have, count)]
        config = dict(record.config)
        if "partitions" in config:
            config["partitions"] = count
        grown = msgspec.structs.replace(record, config=config,
                                        replicas=record.replicas + added)
        epoch = max(cluster.controller_epoch or 0, 0)
        states = [PartitionState(leader=r[0], leader_epoch=0, isr=list(r),
                                 controller_epoch=epoch) for r in added]
        try:
            cluster.store.add_partitions(name, grown, version, have, states)
        except StaleVersion:
            continue  # the record changed meanwhile (another create_partitions): read again
        log.info("topic %s grew from %d to %d partitions", name, have, count)
        return count
    raise NotController(f"topic {name!r} kept changing while partitions were added: retry")


# -- delete_records -----------------------------------------------------------------------
def delete_records(cluster: Cluster, req: p.DeleteRecords, client: Client) -> p.Reply | None:
    """On the partition's leader: move its start offset to ``req.offset`` (-1: its high
    watermark), and answer once every in-sync replica has moved its own there (their
    replica fetches say so), as Kafka's DeleteRecords does."""
    name, partition = req.topic, req.partition
    check_name(name)
    refuse_offsets_topic(name, "its records cannot be deleted (delete_group removes a "
                         "group's; compaction keeps each group's latest)")
    record = cluster.topic_records.get(name)
    if record is None or name in cluster.deleting:
        raise UnknownTopic(f"unknown topic {name!r}: create it first (rail topics create)")
    if not 0 <= partition < len(record.replicas):
        raise UnknownPartition(f"topic {name!r} has partitions "
                               f"0..{len(record.replicas) - 1}, not {partition}")
    replica = cluster.leading(name, partition)
    end = replica.plog.high_watermark or 0
    offset = end if req.offset == -1 else req.offset
    if offset > end:
        raise OffsetOutOfRange(f"cannot delete records of {name}[{partition}] up to "
                               f"{offset}: it ends at {end} (its high watermark)")
    start = replica.plog.delete_records(offset)
    reply = p.DeleteRecordsReply(id=req.id, topic=name, partition=partition,
                                 start_offset=start)
    if replica.low_watermark() >= start:
        return reply
    wait_ms = 2 * cluster.config.replica_lag_time_ms  # an in-sync replica that does not
    # fetch in that time has left the ISR, and the low watermark no longer waits for it

    def answer(final: bool) -> bool:
        broker = cluster.broker
        if cluster.replicas.get(replica.key) is not replica or replica.role != LEADER:
            broker.send_error(client, req.id, NotLeader(
                f"{name}[{partition}]: this broker stopped leading before every in-sync "
                "replica moved its start offset: send delete_records to the new leader"))
        elif replica.low_watermark() >= start:
            broker.send(client, reply)
        elif final:
            broker.send_error(client, req.id, NotEnoughReplicas(
                f"{name}[{partition}]: the leader's start offset is {start}, but in-sync "
                f"replicas have not moved theirs within {wait_ms} ms: retry (deleting "
                "again is harmless)"))
        else:
            return False
        return True
    cluster.broker._park(client, wait_ms, answer, [replica.key], None)
    return None


def follow_start_offset(replica: Replica, leader_start: int) -> None:
    """A follower moves its start offset up to the leader's.  One whose log ends below
    it (it was away while records were deleted) drops its log and starts empty there."""
    plog = replica.plog
    try:
        if leader_start > plog.end_offset:
            log.info("%s[%d]: the leader deleted the records from %d to %d: starting "
                     "again at %d", *replica.key, plog.end_offset, leader_start, leader_start)
            plog.truncate_fully_and_start_at(leader_start)
            replica.epochs.truncate(0)
        elif leader_start > plog.start_offset:
            plog.delete_records(leader_start)
    except StorageError as exc:
        log.error("%s[%d]: cannot follow the leader's start offset %d: %s",
                  *replica.key, leader_start, exc.message)

