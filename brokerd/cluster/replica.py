"""One local replica of a replicated partition: its role, and as leader, its followers.

Kafka's ``Partition``: the leader tracks each follower's log end offset (the offset its
last replica fetch asked for: it holds everything below it) and when it last caught up; the
high watermark is the smallest log end offset in the ISR, and it only moves forward.  A
state transition is a named method; the ZooKeeper writes they need are the caller's
(``node.Cluster``), made before the leader relies on a smaller ISR.  Owned by the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from brokerd.cluster.epochs import LeaderEpochs
from brokerd.cluster.zk import PartitionState
from brokerd.log.partition import PartitionLog

LEADER, FOLLOWER, OFFLINE = "leader", "follower", "offline"


@dataclass(eq=False)
class Replica:
    topic: str
    partition: int
    broker_id: int
    plog: PartitionLog
    epochs: LeaderEpochs
    replicas: list[int]
    min_insync: int
    topic_id: str = ""
    """ZooKeeper's id of the topic this copy belongs to (cluster/topic_id.py)."""
    role: str = OFFLINE
    state: PartitionState | None = None
    version: int = -1
    follower_end: dict[int, int] = field(default_factory=dict)
    caught_up_at: dict[int, float] = field(default_factory=dict)
    follower_start: dict[int, int] = field(default_factory=dict)
    """Each follower's start offset, as its last replica fetch said."""
    sent_end: dict[int, int] = field(default_factory=dict)
    """The leader's log end when it last answered each follower: a fetch from there on
    means the follower caught up with what it was sent (Kafka's lastCaughtUpTime)."""
    led_since: float = 0.0
    storage_error: str = ""
    """Why the last append of a fetched answer failed (a full disk, say); "" once one
    succeeds."""

    @property
    def key(self) -> tuple[str, int]:
        return self.topic, self.partition

    @property
    def leader_epoch(self) -> int:
        return self.state.leader_epoch if self.state else -1

    @property
    def isr(self) -> list[int]:
        return self.state.isr if self.state else []

    # -- transitions ------------------------------------------------------------------
    def become_leader(self, state: PartitionState, version: int, now: float) -> None:
        """Lead from ``state.leader_epoch`` on: new appends belong to that epoch.  Raises
        StorageError, changing nothing, when the epoch cannot be stored."""
        self.epochs.assign(state.leader_epoch, self.plog.end_offset)
        self.state, self.version, self.role = state, version, LEADER
        self.follower_end.clear()
        self.follower_start.clear()
        self.sent_end.clear()
        self.caught_up_at = {b: now for b in state.isr}
        self.led_since = now
        if self.plog.high_watermark is None:
            self.plog.high_watermark = 0
        self.advance_high_watermark()

    def become_follower(self, state: PartitionState, version: int) -> None:
        self.state, self.version, self.role = state, version, FOLLOWER
        if self.plog.high_watermark is None:
            self.plog.high_watermark = 0

    def go_offline(self, state: PartitionState | None = None, version: int = -1) -> None:
        """Stop leading at once (the session was lost, or no leader is elected)."""
        if state is not None:
            self.state, self.version = state, version
        self.role = OFFLINE

    # -- as leader --------------------------------------------------------------------
    def follower_fetched(self, follower: int, offset: int, now: float) -> bool:
        """Note a replica fetch from ``offset``; True if the high watermark moved."""
        self.follower_end[follower] = offset
        if offset >= min(self.sent_end.get(follower, self.plog.end_offset),
                         self.plog.end_offset):
            self.caught_up_at[follower] = now
        return self.advance_high_watermark()

    def advance_high_watermark(self) -> bool:
        if self.role != LEADER:
            return False
        ends = [self.plog.end_offset if b == self.broker_id else self.follower_end.get(b, -1)
                for b in self.isr]
        new = min(ends, default=self.plog.end_offset)
        old = self.plog.high_watermark or 0
        if new > old:
            self.plog.high_watermark = new
            return True
        return False

    def low_watermark(self) -> int:
        """The smallest start offset among the in-sync replicas: records below it are
        deleted on every one of them (what delete_records waits for)."""
        return min((self.plog.start_offset if b == self.broker_id
                    else self.follower_start.get(b, 0) for b in self.isr),
                   default=self.plog.start_offset)

    def may_join_isr(self, follower: int) -> bool:
        """A follower outside the ISR that holds everything up to the high watermark."""
        return (self.role == LEADER and follower not in self.isr and follower in self.replicas
                and self.follower_end.get(follower, -1) >= (self.plog.high_watermark or 0)
                and self.follower_end.get(follower, -1) >= self.epochs_start())

    def epochs_start(self) -> int:
        """Where this leader's epoch began: a follower must have reached it to be in sync."""
        return self.epochs.entries[-1][1] if self.epochs.entries else 0

    def lagging(self, now: float, lag_s: float) -> list[int]:
        """ISR members that have not caught up for ``lag_s``."""
        if self.role != LEADER:
            return []
        return [b for b in self.isr if b != self.broker_id
                and now - self.caught_up_at.get(b, self.led_since) > lag_s]

    def enough_in_sync(self) -> bool:
        return len(self.isr) >= self.min_insync
