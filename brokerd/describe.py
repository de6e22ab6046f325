"""Read-only views of topics and groups for ``metadata`` and ``describe_group``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from brokerd import protocol as p
from brokerd.topics import Topic

if TYPE_CHECKING:
    from brokerd.groups import Group
    from brokerd.handlers import Handlers as Broker


def topic_info(topic: Topic) -> p.TopicInfo:
    parts = [p.PartitionInfo(partition=i, start_offset=pl.start_offset,
                             end_offset=pl.visible_end, size_bytes=pl.size_bytes)
             for i, pl in enumerate(topic.partitions)]
    return p.TopicInfo(name=topic.name, partitions=parts,
                       config=msgspec.to_builtins(topic.config))


def member_infos(group: Group | None) -> list[p.MemberInfo]:
    """A group's members as ``describe_group`` shows them, sorted by member id."""
    if group is None:
        return []
    now = int(time.monotonic() * 1000)
    return [p.MemberInfo(member_id=m.member_id, client_id=m.client_id, topics=m.topics,
                         assignment=group.assignment_of(m.member_id),
                         last_seen_ms_ago=now - m.last_seen_ms)
            for m in sorted(group.members.values(), key=lambda m: m.member_id)]


def describe_group(broker: Broker, req: p.DescribeGroup) -> p.DescribeGroupReply:
    coordinator = broker.coordinator
    group = coordinator.groups.get(req.group)
    committed = broker.offsets.for_group(req.group)
    members = member_infos(group)
    tps = set(committed) | (set(group.owners) if group is not None else set())
    partitions = []
    for topic, index in sorted(tps):
        t = broker.topics.topics.get(topic)
        if t is None or index >= len(t.partitions):
            continue
        plog = t.partitions[index]
        done = committed.get((topic, index))
        lag_from = plog.start_offset if done is None else done
        partitions.append(p.GroupPartition(
            topic=topic, partition=index, committed=done,
            position=group.positions.get((topic, index)) if group else None,
            end_offset=plog.visible_end, lag=max(0, plog.visible_end - lag_from),
            owner=group.owners.get((topic, index)) if group else None))
    return p.DescribeGroupReply(
        id=req.id, group=req.group, state=group.state if group else "empty",
        generation=group.generation if group else 0, members=members, partitions=partitions)
