"""Consumer groups, with the broker as coordinator and assignor.

A member joins with the topics it wants; every change of membership (join, leave, a
session that expires, a topic that appears) starts a new generation with a fresh
round-robin assignment: the group's partitions, sorted by (topic, partition), dealt in
turn to the members subscribed to their topic, sorted by member id.  Members learn the
new generation from any heartbeat or poll reply.

The broker remembers each member's position (the next offset ``poll`` delivers).  A
partition that changes owner restarts from the group's committed offset, so work that
was delivered but not committed is delivered again (at-least-once).  A commit is fenced:
only the current owner of a partition may move its offset.

A member that joined with a ``rebalance_timeout_ms`` hands its partitions over instead
(Kafka's cooperative rebalancing, KIP-429, in one step): a partition that moves away from
it is owned by nobody, and so delivered to nobody, until the member says ``release`` (after
finishing and committing what it was handling: it may still commit it meanwhile), leaves,
expires, or the timeout passes; then it goes to its new owner in a new generation, which
starts from what was committed.

Pure logic, no sockets, time passed in: not thread-safe, owned by the broker loop.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from brokerd.errors import (
    GroupNotEmpty,
    NotMember,
    OffsetOutOfRange,
    StaleGeneration,
    UnknownGroup,
    UnknownTopic,
)

TP = tuple[str, int]


class OffsetsBackend(Protocol):
    """Where committed offsets live: ``log.offsets.OffsetStore`` on a single broker,
    ``cluster.coordinator.GroupOffsets`` in a cluster.  ``commit`` and ``forget`` return
    what the answer must wait for to be durable (None: nothing)."""

    def get(self, group: str, topic: str, partition: int) -> int | None: ...
    def commit(self, group: str, items: list[tuple[str, int, int]]) -> Any: ...
    def groups(self) -> set[str]: ...
    def forget(self, group: str | None = None, topic: str | None = None) -> Any: ...


class LogView(Protocol):
    def partition_count(self, topic: str) -> int | None: ...
    def bounds(self, topic: str, partition: int) -> tuple[int, int]: ...


@dataclass
class Member:
    member_id: str
    client_id: str
    topics: list[str]
    session_timeout_ms: int
    last_seen_ms: int
    incarnation: int = 0
    """Counts joins under this member id: a poll parked by an earlier incarnation (a
    process that died without leaving) must not read for the new one."""
    rebalance_timeout_ms: int = 0
    """How long its partitions wait for its ``release`` when they move (0: they move at once)."""

    def expires_at(self) -> int:
        return self.last_seen_ms + self.session_timeout_ms


@dataclass
class Group:
    name: str
    start: str = "earliest"
    generation: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    owners: dict[TP, str] = field(default_factory=dict)
    positions: dict[TP, int] = field(default_factory=dict)
    revoking: dict[TP, tuple[str, int]] = field(default_factory=dict)
    """Partitions being handed over: (the member that still holds them, until when)."""
    target: dict[TP, str] = field(default_factory=dict)
    """Who each partition goes to once handed over (the last rebalance's deal)."""

    _assigned: dict[str, list[TP]] = field(default_factory=dict, repr=False)
    _assigned_generation: int = -1

    def assignment_of(self, member_id: str) -> list[TP]:
        """The member's partitions, sorted (worked out once a generation: do not modify)."""
        if self._assigned_generation != self.generation:
            self._assigned = {}
            self._assigned_generation = self.generation
        got = self._assigned.get(member_id)
        if got is None:
            got = self._assigned[member_id] = sorted(
                tp for tp, owner in self.owners.items() if owner == member_id)
        return got

    def hands_over(self, tp: TP, member_id: str) -> bool:
        """``member_id`` still holds ``tp``, which a rebalance moved away from it."""
        holding = self.revoking.get(tp)
        return holding is not None and holding[0] == member_id

    @property
    def state(self) -> str:
        return "stable" if self.members else "empty"


class Coordinator:
    def __init__(self, offsets: OffsetsBackend, logs: LogView,
                 on_rebalance: Callable[[Group], None] = lambda g: None) -> None:
        self.offsets = offsets
        self.logs = logs
        self.groups: dict[str, Group] = {}
        self.on_rebalance = on_rebalance
        self.rebalances = 0  # since the broker started (stats, /metrics)
        self.clock_ms = 0  # the latest time passed in: when hand-overs started

    # -- membership -------------------------------------------------------------------
    def join(self, group_name: str, member_id: str, topics: list[str], session_timeout_ms: int,
             start: str, client_id: str, now_ms: int,
             rebalance_timeout_ms: int = 0) -> tuple[Group, Member]:
        self.clock_ms = max(self.clock_ms, now_ms)
        group = self.groups.setdefault(group_name, Group(group_name, start=start))
        if not group.members:
            group.start = start
        member = group.members.get(member_id) if member_id else None
        if member is None:
            member_id = member_id or f"{client_id or 'member'}-{uuid.uuid4().hex[:12]}"
            member = Member(member_id, client_id, sorted(set(topics)), session_timeout_ms, now_ms,
                            rebalance_timeout_ms=rebalance_timeout_ms)
            group.members[member_id] = member
            self.rebalance(group)
        else:
            # A join under a live member id is a new incarnation (a restarted process): what
            # the old one was delivered but did not commit must be delivered again.
            member.incarnation += 1
            member.rebalance_timeout_ms = rebalance_timeout_ms
            for tp in group.assignment_of(member_id):
                group.positions.pop(tp, None)
                self.position(group, tp)
            # A new incarnation handles nothing it held before: what it was handing over
            # goes on now.
            self._hand_over(group, [tp for tp, (holder, _) in group.revoking.items()
                                    if holder == member_id])
            member.last_seen_ms = now_ms
            member.session_timeout_ms = session_timeout_ms
            if sorted(set(topics)) != member.topics:
                member.topics = sorted(set(topics))
                self.rebalance(group)
        return group, member

    def member(self, group_name: str, member_id: str, now_ms: int) -> tuple[Group, Member]:
        """Find a live member and count this call as a sign of life."""
        group = self.groups.get(group_name)
        member = group.members.get(member_id) if group else None
        if group is None or member is None:
            raise NotMember(f"{member_id!r} is not a member of group {group_name!r}"
                            " (session expired or never joined): join again")
        member.last_seen_ms = now_ms
        self.clock_ms = max(self.clock_ms, now_ms)
        return group, member

    def _require_member_commit(self, group_name: str, member_id: str) -> None:
        group = self.groups.get(group_name)
        if not member_id and group and group.members:
            raise NotMember(f"group {group_name!r} has live members: commit as one of them "
                            "(join, then send member_id), or wait until the group is empty")

    def leave(self, group_name: str, member_id: str) -> bool:
        group = self.groups.get(group_name)
        if group is None or group.members.pop(member_id, None) is None:
            return False
        self.rebalance(group)
        return True

    def delete(self, group_name: str) -> Any:
        """Forget a group without live members, and its committed offsets; return what
        the backend's ``forget`` returned."""
        group = self.groups.get(group_name)
        if group is None and group_name not in self.offsets.groups():
            raise UnknownGroup(f"unknown group {group_name!r}: see list_groups")
        if group is not None and group.members:
            raise GroupNotEmpty(f"group {group_name!r} has {len(group.members)} live "
                                "member(s): stop them (or wait for their sessions to expire) "
                                "before deleting it")
        self.groups.pop(group_name, None)
        return self.offsets.forget(group=group_name)

    def unload(self, gone: Callable[[str], bool]) -> list[str]:
        """Forget the live groups for which ``gone`` is true (another broker coordinates
        them now); return their names."""
        names = [name for name in self.groups if gone(name)]
        for name in names:
            del self.groups[name]
        return names

    def expire(self, now_ms: int) -> list[tuple[str, str]]:
        """Remove members whose session ran out; return (group, member_id) of each.  Hand
        over the partitions whose release did not come in time."""
        self.clock_ms = max(self.clock_ms, now_ms)
        gone = []
        for group in self.groups.values():
            if group.revoking:
                self._hand_over(group, [tp for tp, (_, until) in group.revoking.items()
                                        if until <= now_ms])
            dead = [m for m in group.members.values() if m.expires_at() <= now_ms]
            for m in dead:
                del group.members[m.member_id]
                gone.append((group.name, m.member_id))
            if dead:
                self.rebalance(group)
        return gone

    def next_expiry(self) -> int | None:
        """When ``expire`` may next have something to do: a session or a hand-over ends."""
        deadlines = [m.expires_at() for g in self.groups.values() for m in g.members.values()]
        deadlines += [until for g in self.groups.values() for _, until in g.revoking.values()]
        return min(deadlines, default=None)

    def release(self, group_name: str, member_id: str, tps: list[TP], now_ms: int) -> list[TP]:
        """``member_id`` is done with ``tps`` (it committed what it handled): hand over
        those it was handing over; return them."""
        group, _ = self.member(group_name, member_id, now_ms)
        done = [tp for tp in tps if group.hands_over(tp, member_id)]
        self._hand_over(group, done)
        return done

    def _hand_over(self, group: Group, tps: list[TP]) -> None:
        """``tps`` go to the owners the last rebalance dealt them to, in a new generation."""
        if not tps:
            return
        for tp in tps:
            del group.revoking[tp]
            owner = group.target.get(tp)
            if owner is not None and owner in group.members:
                group.owners[tp] = owner
            group.positions.pop(tp, None)
        group.generation += 1
        for tp in tps:
            if tp in group.owners:
                self.position(group, tp)
        self.on_rebalance(group)

    def topics_changed(self, topics: set[str]) -> None:
        """Re-deal the groups subscribed to ``topics`` after they were created or deleted."""
        if not topics:
            return
        for group in self.groups.values():
            if any(set(m.topics) & topics for m in group.members.values()):
                self.rebalance(group)

    # -- assignment -------------------------------------------------------------------
    def rebalance(self, group: Group) -> None:
        self.rebalances += 1
        owners: dict[TP, str] = {}
        wanted = sorted({t for m in group.members.values() for t in m.topics})
        turn = 0
        for topic in wanted:
            count = self.logs.partition_count(topic) or 0
            eligible = sorted(m.member_id for m in group.members.values() if topic in m.topics)
            for p in range(count):
                owners[(topic, p)] = eligible[turn % len(eligible)]
                turn += 1
        # A partition moving away from a member that hands over waits for it.
        target, owners, revoking = owners, {}, {}
        for tp, new in target.items():
            holding = group.revoking.get(tp)
            holder = holding[0] if holding else group.owners.get(tp)
            member = group.members.get(holder) if holder is not None else None
            if member is not None and holder != new and member.rebalance_timeout_ms > 0:
                revoking[tp] = holding or (holder, self.clock_ms + member.rebalance_timeout_ms)
            else:
                owners[tp] = new
        for tp in list(group.positions):
            if owners.get(tp) != group.owners.get(tp):
                del group.positions[tp]
        group.owners, group.revoking, group.target = owners, revoking, target
        group.generation += 1
        for tp in owners:  # fix where each new owner starts now, not at its first poll
            self.position(group, tp)
        self.on_rebalance(group)

    # -- positions and commits --------------------------------------------------------
    def committed(self, group: str, tp: TP) -> int | None:
        return self.offsets.get(group, tp[0], tp[1])

    def position(self, group: Group, tp: TP) -> int:
        """Next offset to deliver: the member's position, else committed, else the start."""
        start, end = self.logs.bounds(*tp)
        pos = group.positions.get(tp)
        if pos is None:
            pos = self.committed(group.name, tp)
        if pos is None:
            pos = start if group.start == "earliest" else end
        pos = min(max(pos, start), end)
        group.positions[tp] = pos
        return pos

    def commit(self, group_name: str, member_id: str, generation: int,
               items: list[tuple[str, int, int]], now_ms: int) -> Any:
        """Fence, check and store a commit; return what the backend's ``commit`` returned."""
        self._require_member_commit(group_name, member_id)
        group = self.groups.get(group_name)
        if member_id:
            group, _ = self.member(group_name, member_id, now_ms)
            for topic, partition, _offset in items:
                owner = group.owners.get((topic, partition))
                if owner != member_id and not group.hands_over((topic, partition), member_id):
                    raise StaleGeneration(
                        f"{topic}[{partition}] belongs to {owner or 'nobody'} in generation "
                        f"{group.generation} (you sent generation {generation}): poll or "
                        "heartbeat to learn your assignment, then commit what you own")
        for topic, partition, offset in items:
            count = self.logs.partition_count(topic)
            if count is None:
                raise UnknownTopic(f"unknown topic {topic!r}")
            _, end = self.logs.bounds(topic, partition)
            if offset > end:
                raise OffsetOutOfRange(
                    f"cannot commit {topic}[{partition}] at {offset}: the log ends at {end}")
        return self.offsets.commit(group_name, items)

    def seek(self, group: Group, member_id: str, tp: TP, offset: int) -> None:
        if group.owners.get(tp) != member_id:
            raise StaleGeneration(f"{tp[0]}[{tp[1]}] is not assigned to {member_id}")
        start, end = self.logs.bounds(*tp)
        if not start <= offset <= end:
            raise OffsetOutOfRange(f"{tp[0]}[{tp[1]}] holds offsets {start}..{end}, not {offset}")
        group.positions[tp] = offset

    def known_groups(self) -> list[str]:
        return sorted(set(self.groups) | self.offsets.groups())
