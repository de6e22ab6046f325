"""The consumer groups page's data: members, assignment, committed offsets and lag (the
``describe_group`` ``rail groups describe`` reads), and offset resets."""

from __future__ import annotations

from typing import Any

from brokerd import protocol as p
from runtime.connection import BrokerError, Connection

RESET_TO = ("earliest", "latest", "offset", "timestamp")


class ResetError(ValueError):
    """An offset reset that cannot be done as asked; the message says what to do."""


def group_json(g: p.DescribeGroupReply) -> dict[str, Any]:
    return {"group": g.group, "state": g.state, "generation": g.generation,
            "members": [{"member_id": m.member_id, "client_id": m.client_id,
                         "topics": list(m.topics),
                         "assignment": [f"{t}[{n}]" for t, n in m.assignment],
                         "last_seen_ms_ago": m.last_seen_ms_ago} for m in g.members],
            "partitions": [{"topic": x.topic, "partition": x.partition,
                            "committed": x.committed, "position": x.position,
                            "end_offset": x.end_offset, "lag": x.lag, "owner": x.owner}
                           for x in g.partitions],
            "lag": sum(x.lag for x in g.partitions)}


def describe_all(conn: Connection) -> list[dict[str, Any]]:
    """Every group the broker knows, described (the scrape the lag history is kept from)."""
    names = conn.call(p.ListGroups()).groups
    return [group_json(conn.call(p.DescribeGroup(group=name))) for name in names]


def describe(conn: Connection, name: str) -> dict[str, Any]:
    return group_json(conn.call(p.DescribeGroup(group=name)))


def reset_offsets(conn: Connection, group: str, topic: str, to: str, value: int = 0,
                  partition: int | None = None) -> list[dict[str, Any]]:
    """Commit new offsets for ``group`` on ``topic`` as a tool (no member id): the broker
    refuses while the group has live members, as ``rail groups reset-offsets`` does."""
    if to not in RESET_TO:
        raise ResetError(f"reset to {to!r}: use one of {', '.join(RESET_TO)}")
    described = conn.call(p.DescribeGroup(group=group))
    if described.members:
        raise ResetError(f"group {group} has {len(described.members)} live member(s): stop "
                         "them first (scale its worker to 0 on the tree), then reset")
    infos = conn.call(p.Metadata(topics=[topic])).topics[0].partitions
    if partition is not None:
        infos = [i for i in infos if i.partition == partition]
        if not infos:
            raise ResetError(f"topic {topic} has no partition {partition}")
    committed = {(x.topic, x.partition): x.committed for x in described.partitions}
    plan = []
    for info in infos:
        new = _target(conn, topic, info, to, value)
        plan.append({"topic": topic, "partition": info.partition,
                     "before": committed.get((topic, info.partition)),
                     "after": min(max(new, info.start_offset), info.end_offset)})
    try:
        conn.call(p.Commit(group=group, offsets=[(topic, m["partition"], m["after"])
                                                 for m in plan]))
    except BrokerError as exc:
        if exc.code == "NOT_MEMBER":
            raise ResetError(f"group {group} has live members now: stop them first") from None
        raise
    return plan


def _target(conn: Connection, topic: str, info: p.PartitionInfo, to: str, value: int) -> int:
    if to == "earliest":
        return info.start_offset
    if to == "latest":
        return info.end_offset
    if to == "offset":
        return value
    return int(conn.call(p.ListOffsets(topic=topic, partition=info.partition,
                                       timestamp=value)).offset)
