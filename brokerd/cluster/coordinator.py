"""Consumer groups in a cluster: committed offsets kept as records of ``__rail_offsets``.

Group G lives in partition ``crc32(G) % 8`` of the internal, compacted topic
``__rail_offsets`` (the key hash of ``protocol.partition_for_key`` on the group's name);
the leader of that partition is G's coordinator.  A commit is a record whose key is
``[group, topic, partition]`` and whose value is the offset (nil: a tombstone, written by
``delete_group``), appended to the leader's log like a produce; the caller answers it once
the high watermark covers it (``DurableAck``), so an acknowledged commit survives the
coordinator's death.  A broker that becomes leader of an offsets partition replays it
(last value per key) and answers for its groups only once its high watermark has reached
the end it replayed (every offset it would serve is replicated): until then
``COORDINATOR_LOADING``.  When it stops leading it forgets the partition's offsets and
its groups' members (members rejoin the new coordinator, as in Kafka).

``GroupOffsets`` is the ``groups.OffsetsBackend`` of the clustered broker's
``Coordinator``; ``GroupTopics`` its ``LogView``.  Owned by the broker loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from brokerd import protocol as p
from brokerd.describe import member_infos
from brokerd.errors import (
    BadRequest,
    CoordinatorLoading,
    NotCoordinator,
    RailError,
    TopicExists,
    UnknownPartition,
)
from brokerd.log.batch import decode_records
from brokerd.log.partition import now_ms

if TYPE_CHECKING:
    from brokerd.cluster.node import Cluster
    from brokerd.cluster.replica import Replica
    from brokerd.log.partition import PartitionLog
    from brokerd.server import Broker

log = logging.getLogger("brokerd.cluster")

OFFSETS_TOPIC = "__rail_offsets"
OFFSETS_PARTITIONS = 8
Key = tuple[str, str, int]
Need = tuple["PartitionLog", int]
_RECORDS = msgspec.msgpack.Decoder(list[p.WireRecord])
READ_BYTES = 1 << 20


def partition_of(group: str) -> int:
    """The ``__rail_offsets`` partition that holds ``group``."""
    return p.partition_for_key(group, OFFSETS_PARTITIONS)


def offsets_topic_config(live_brokers: int) -> dict[str, Any]:
    factor = min(3, live_brokers)
    return {"cleanup_policy": "compact", "replication_factor": factor,
            "min_insync_replicas": 2 if factor >= 2 else 1}


class GroupOffsets:
    """The committed offsets of the groups whose offsets partitions this broker leads."""

    def __init__(self, broker: Broker, cluster: Cluster) -> None:
        self.broker = broker
        self.cluster = cluster
        self.loaded: dict[int, dict[Key, int]] = {}
        self.loading: dict[int, tuple[dict[Key, int], int]] = {}
        """Partitions replayed but not yet served: (offsets, the end the high watermark
        must reach first)."""

    # -- who coordinates ------------------------------------------------------------------
    def check(self, group: str) -> None:
        """Raise unless this broker coordinates ``group`` now."""
        index = partition_of(group)
        if index in self.loaded:
            return
        if index in self.loading:
            raise CoordinatorLoading(
                f"broker {self.cluster.id} became the coordinator of group {group!r} and is "
                "loading its offsets: retry shortly")
        raise NotCoordinator(
            f"broker {self.cluster.id} is not the coordinator of group {group!r} "
            f"({OFFSETS_TOPIC}[{index}]): call find_coordinator and send it there")

    # -- leadership of an offsets partition (called by node.Cluster) --------------------
    def role_changed(self, replica: Replica, leading: bool) -> None:
        index = replica.partition
        if leading and index not in self.loaded and index not in self.loading:
            offsets = replay(replica.plog)
            self.loading[index] = (offsets, replica.plog.end_offset)
            log.info("%s[%d]: loading %d committed offset(s) up to offset %d", OFFSETS_TOPIC,
                     index, len(offsets), replica.plog.end_offset)
            self.high_watermark_moved(replica)
        elif not leading and (index in self.loaded or index in self.loading):
            self.loaded.pop(index, None)
            self.loading.pop(index, None)
            gone = self.broker.coordinator.unload(lambda g: partition_of(g) == index)
            log.info("%s[%d]: no longer coordinator; forgot group(s) %s", OFFSETS_TOPIC,
                     index, gone)

    def high_watermark_moved(self, replica: Replica) -> None:
        waiting = self.loading.get(replica.partition)
        if waiting is not None and (replica.plog.high_watermark or 0) >= waiting[1]:
            del self.loading[replica.partition]
            self.loaded[replica.partition] = waiting[0]
            log.info("%s[%d]: loaded; coordinating its groups", OFFSETS_TOPIC,
                     replica.partition)

    # -- groups.OffsetsBackend ------------------------------------------------------------
    def get(self, group: str, topic: str, partition: int) -> int | None:
        return self.loaded.get(partition_of(group), {}).get((group, topic, partition))

    def for_group(self, group: str) -> dict[tuple[str, int], int]:
        offsets = self.loaded.get(partition_of(group), {})
        return {(t, q): o for (g, t, q), o in offsets.items() if g == group}

    def groups(self) -> set[str]:
        return {g for offsets in self.loaded.values() for g, _, _ in offsets}

    def commit(self, group: str, items: list[tuple[str, int, int]]) -> Need | None:
        """Append the commit as records; return what its answer waits for."""
        if not items:
            return None
        need = self._append(group, [((group, t, q), o) for t, q, o in items])
        offsets = self.loaded[partition_of(group)]
        for topic, partition, offset in items:
            offsets[(group, topic, partition)] = offset
        return need

    def forget(self, group: str | None = None, topic: str | None = None) -> Need | None:
        """A tombstone for each committed offset of ``group`` (delete_group)."""
        if group is None:
            raise BadRequest("a cluster forgets offsets only by group (delete_group)")
        keys = [k for k in self.for_group(group)]
        if not keys:
            return None
        need = self._append(group, [((group, t, q), None) for t, q in keys])
        offsets = self.loaded[partition_of(group)]
        for t, q in keys:
            offsets.pop((group, t, q), None)
        return need

    def forget_topic(self, topic: str) -> None:
        """A tombstone for each committed offset of ``topic`` in the offsets partitions
        this broker coordinates (the topic is being deleted; Kafka removes them too).
        Nobody waits for them; those refused (too few in-sync replicas) stay."""
        for offsets in self.loaded.values():
            by_group: dict[str, list[Key]] = {}
            for key in offsets:
                if key[1] == topic:
                    by_group.setdefault(key[0], []).append(key)
            for group, keys in by_group.items():
                try:
                    self._append(group, [(key, None) for key in keys])
                except RailError as exc:
                    log.warning("cannot forget the offsets of deleted topic %s in group "
                                "%s: %s", topic, group, exc.message)
                    continue
                for key in keys:
                    offsets.pop(key, None)
                log.info("forgot group %s's offsets of deleted topic %s", group, topic)

    def _append(self, group: str, entries: list[tuple[Key, int | None]]) -> Need:
        self.check(group)
        index = partition_of(group)
        self.cluster.check_produce(OFFSETS_TOPIC, index, "all")
        payload = msgspec.msgpack.encode([[value, list(key)] for key, value in entries])
        topic = self.broker.topics.get(OFFSETS_TOPIC)
        _, _, need = self.broker._append(topic, index, payload, decode_records(payload), 0,
                                         -1, now_ms())
        assert need is not None  # not idempotent: never a duplicate
        return need


def replay(plog: PartitionLog) -> dict[Key, int]:
    """The last offset per key in the whole log (tombstones delete)."""
    offsets: dict[Key, int] = {}
    offset = plog.start_offset
    while offset < plog.end_offset:
        batches = plog.read_all(offset, READ_BYTES)
        if not batches:
            break
        for batch in batches:
            for record in _RECORDS.decode(bytes(batch.payload)):
                try:
                    key = msgspec.convert(record.key, Key)
                except msgspec.ValidationError:
                    log.warning("%s: skipping a record whose key is not [group, topic, "
                                "partition]: %r", plog.directory, record.key)
                    continue
                if record.value is None:
                    offsets.pop(key, None)
                elif isinstance(record.value, int) and record.value >= 0:
                    offsets[key] = record.value
            offset = batch.header.next_offset
    return offsets


class GroupTopics:
    """``groups.LogView`` in a cluster: partition counts from ZooKeeper's topic records
    (the coordinator need not hold a replica of a group's topics).  Positions are the
    members' own there, so no log end bounds a commit (Kafka does not check one either)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def partition_count(self, topic: str) -> int | None:
        record = self.cluster.topic_records.get(topic)
        return None if record is None else len(record.replicas)

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        count = self.partition_count(topic) or 0
        if partition >= count:
            raise UnknownPartition(f"topic {topic!r} has partitions 0..{count - 1}, "
                                   f"not {partition}")
        return 0, 2**63 - 1


def find_coordinator(cluster: Cluster, group: str) -> tuple[int, str]:
    """(broker id, API endpoint) of the leader of ``group``'s offsets partition; the
    first call in a cluster creates ``__rail_offsets`` (a creation racing another
    broker's ends in one topic: ZooKeeper creates its znode once)."""
    if not cluster.store.connected:
        raise NotCoordinator("this broker has lost its ZooKeeper connection: ask another "
                             "broker (find_coordinator), or retry")
    index = partition_of(group)
    if OFFSETS_TOPIC in cluster.topic_records:
        # this broker's view, as its metadata answers (Kafka's FindCoordinator reads its
        # metadata cache too): no ZooKeeper round trip on the loop, which served nobody
        # meanwhile (0.9 ms a call, 5 ms at p99, on three loopback brokers). A view a
        # moment old sends a client to the old coordinator: NOT_COORDINATOR, it asks again.
        known = cluster.brokers.get(cluster.named_leader(OFFSETS_TOPIC, index))
        if known is not None:
            return _serving(cluster, group, index, known.id), known.api
    record = cluster.store.topic(OFFSETS_TOPIC)
    if record is None:
        try:
            cluster.create_topic(OFFSETS_TOPIC, OFFSETS_PARTITIONS,
                                 offsets_topic_config(len(cluster.brokers)))
        except TopicExists:
            pass
    state, _ = cluster.store.state(OFFSETS_TOPIC, index)
    broker = cluster.brokers.get(state.leader)
    if broker is None:
        raise NotCoordinator(f"{OFFSETS_TOPIC}[{index}], which holds group {group!r}, has no "
                             "live leader now: retry find_coordinator shortly")
    return _serving(cluster, group, index, broker.id), broker.api


def _serving(cluster: Cluster, group: str, index: int, broker_id: int) -> int:
    """``broker_id``, unless it is this broker and it does not serve ``group`` yet: named
    leader in ZooKeeper (the first call had just created the topic) but not yet leading
    here, or still loading the offsets. Naming itself then sent the client's ``join`` to a
    NOT_COORDINATOR (a CI run's failure, 3 of 20 fresh clusters on a loaded machine)."""
    if broker_id == cluster.id and index not in cluster.group_offsets.loaded:
        raise NotCoordinator(f"broker {cluster.id} is taking over {OFFSETS_TOPIC}[{index}], "
                             f"which holds group {group!r}: retry find_coordinator shortly")
    return broker_id


def describe(broker: Broker, group_name: str, request_id: int) -> p.DescribeGroupReply:
    """``describe_group`` on the coordinator: members, assignment and committed offsets.
    Positions are the members' own in a cluster (None here); ``end_offset`` and ``lag``
    come from this broker's replica of the partition, -1 where it holds none."""
    coordinator = broker.coordinator
    group = coordinator.groups.get(group_name)
    committed = coordinator.offsets.for_group(group_name)  # type: ignore[attr-defined]
    members = member_infos(group)
    tps = set(committed) | (set(group.owners) if group is not None else set())
    partitions = []
    for topic, index in sorted(tps):
        local = broker.topics.topics.get(topic)
        end = local.partitions[index].visible_end if local and index < len(
            local.partitions) else -1
        done = committed.get((topic, index))
        partitions.append(p.GroupPartition(
            topic=topic, partition=index, committed=done, position=None, end_offset=end,
            lag=-1 if end < 0 else max(0, end - (done or 0)),
            owner=group.owners.get((topic, index)) if group else None))
    return p.DescribeGroupReply(
        id=request_id, group=group_name, state=group.state if group else "empty",
        generation=group.generation if group else 0, members=members, partitions=partitions)
