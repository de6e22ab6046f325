"""Parked requests: long-poll fetches and polls, and produces waiting for an fsync.

A long poll parks under every (topic, partition) it reads; an append to one of them, a
rebalance of its group, or its deadline wakes it, and the loop then answers it with
whatever there is.  Not thread-safe: owned by the broker loop.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from brokerd.log.partition import PartitionLog

log = logging.getLogger("brokerd")

Client = tuple[bytes, bool]  # (ZeroMQ routing identity, sent as REQ with a delimiter)
TP = tuple[str, int]


def topic_key(topic: str) -> TP:
    """The key a request waiting on a topic's metadata parks under (``create_topic`` in a
    cluster): no partition has index -1."""
    return (topic, -1)


@dataclass(eq=False)
class Waiter:
    client: Client
    deadline: float
    answer: Callable[[bool], bool]
    """Try to answer; with ``final`` it must answer.  Returns True once answered."""
    keys: list[TP] = field(default_factory=list)
    group: str | None = None
    done: bool = False


class WaitingRoom:
    def __init__(self) -> None:
        self._by_tp: dict[TP, set[Waiter]] = defaultdict(set)
        self._by_group: dict[str, set[Waiter]] = defaultdict(set)
        self._per_client: dict[bytes, int] = defaultdict(int)
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._seq = itertools.count()
        self._arrived: set[TP] = set()

    def count(self, identity: bytes) -> int:
        return self._per_client.get(identity, 0)

    def parked(self) -> int:
        """Requests waiting here, all clients together."""
        return sum(self._per_client.values())

    def park(self, waiter: Waiter) -> None:
        for tp in waiter.keys:
            self._by_tp[tp].add(waiter)
        if waiter.group is not None:
            self._by_group[waiter.group].add(waiter)
        self._per_client[waiter.client[0]] += 1
        heapq.heappush(self._deadlines, (waiter.deadline, next(self._seq), waiter))

    def _unpark(self, waiter: Waiter) -> None:
        waiter.done = True
        for tp in waiter.keys:
            bucket = self._by_tp.get(tp)
            if bucket is not None:
                bucket.discard(waiter)
                if not bucket:
                    del self._by_tp[tp]
        if waiter.group is not None:
            bucket = self._by_group.get(waiter.group)
            if bucket is not None:
                bucket.discard(waiter)
                if not bucket:
                    del self._by_group[waiter.group]
        left = self._per_client[waiter.client[0]] - 1
        if left:
            self._per_client[waiter.client[0]] = left
        else:
            del self._per_client[waiter.client[0]]

    def _try(self, waiters: set[Waiter] | None, final: bool) -> None:
        for waiter in list(waiters or ()):
            if not waiter.done and _answer(waiter, final):
                self._unpark(waiter)

    def data_arrived(self, tp: TP) -> None:
        """Note new data in ``tp``; ``deliver`` answers its waiters."""
        if tp in self._by_tp:
            self._arrived.add(tp)

    def deliver(self) -> None:
        """Answer the waiters of every partition that got data since the last call.

        The loop calls this once it has read what its sockets held, so a burst of produces
        reaches a parked poll as one reply, not one reply per produce.
        """
        while self._arrived:
            tp = self._arrived.pop()
            if tp in self._by_tp:
                self._try(self._by_tp[tp], final=False)

    def group_changed(self, group: str) -> None:
        if group in self._by_group:
            self._try(self._by_group[group], final=True)

    def expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(self._deadlines)
            if not waiter.done:
                _answer(waiter, True)
                self._unpark(waiter)

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][2].done:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def answer_all(self) -> None:
        """Answer everyone now (shutdown)."""
        for _, _, waiter in list(self._deadlines):
            if not waiter.done:
                _answer(waiter, True)
                self._unpark(waiter)
        self._deadlines.clear()


def _answer(waiter: Waiter, final: bool) -> bool:
    """``waiter.answer(final)``; a bug in it drops that request (its client times out)
    instead of taking the broker down for everyone."""
    try:
        return waiter.answer(final)
    except Exception:  # noqa: BLE001
        log.exception("internal error answering a parked request; dropping it")
        return True


@dataclass
class DurableAck:
    """A reply to send once ``log`` is fsynced up to ``needed`` (its end offset then)."""

    client: Client
    reply: Any
    needs: list[tuple[PartitionLog, int]]


class AckQueue:
    """Produces waiting for the fsync that covers them (group commit), or for the end of
    the loop turn."""

    def __init__(self) -> None:
        self.pending: list[DurableAck] = []
        # acks=1 replies of this loop turn, sent right after the turn's deliveries (a
        # consumer waiting for the data is further along the critical path than the ack)
        self.after_delivery: list[tuple[Client, Any]] = []

    def add(self, ack: DurableAck) -> None:
        self.pending.append(ack)

    def settle(self) -> list[DurableAck]:
        """Remove and return the acks whose every partition is durable far enough."""
        return self._take(lambda ack: all(
            log.durable_offset >= needed
            and (log.high_watermark is None or log.high_watermark >= needed)
            for log, needed in ack.needs))

    def fail(self, logs: set[PartitionLog]) -> list[DurableAck]:
        """Remove and return the acks waiting on any of ``logs`` (their fsync failed)."""
        return self._take(lambda ack: any(log in logs for log, _ in ack.needs))

    def _take(self, ready: Callable[[DurableAck], bool]) -> list[DurableAck]:
        taken: list[DurableAck] = []
        waiting: list[DurableAck] = []
        for ack in self.pending:
            (taken if ready(ack) else waiting).append(ack)
        self.pending = waiting
        return taken

    def logs(self) -> set[PartitionLog]:
        return {log for ack in self.pending for log, _ in ack.needs}
