"""Idempotent producer state of one partition: which batches each producer already wrote.

A producer numbers its records per partition from 0.  A batch whose ``base_sequence`` is the
next expected one is appended; a retry of one of the last ``WINDOW`` batches is answered with
its original offset; a jump ahead is refused, so a lost batch is never papered over.  The
state is rebuilt from batch headers on recovery and snapshotted when a segment rolls.
Not thread-safe: owned by its partition.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import msgspec

from brokerd.errors import OutOfOrderSequence
from brokerd.protocol import IDEMPOTENCE_WINDOW

WINDOW = IDEMPOTENCE_WINDOW
MAX_PRODUCERS = 10_000


class SentBatch(NamedTuple):
    base_sequence: int
    record_count: int
    base_offset: int


class DuplicateBatch(Exception):
    """The batch was appended before: ``base_offset`` is where it went (None if too old)."""

    def __init__(self, base_offset: int | None) -> None:
        super().__init__(base_offset)
        self.base_offset = base_offset


class ProducerTable:
    def __init__(self) -> None:
        self._recent: OrderedDict[int, list[SentBatch]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._recent)

    def check(self, producer_id: int, base_sequence: int, record_count: int) -> None:
        """Raise DuplicateBatch or OutOfOrderSequence unless the batch is the next one."""
        recent = self._recent.get(producer_id)
        if not recent:  # a producer this partition does not know starts at 0 (as in Kafka):
            if base_sequence == 0:  # else a lost first batch could be taken for a duplicate
                return
            raise OutOfOrderSequence(
                f"producer {producer_id} is unknown to this partition, so its first batch "
                f"must have sequence 0, not {base_sequence}: resend from the first "
                "unacknowledged batch, or start again under a new producer id")
        last = recent[-1]
        expected = last.base_sequence + last.record_count
        if base_sequence == expected:
            return
        for sent in recent:
            if sent.base_sequence == base_sequence and sent.record_count == record_count:
                raise DuplicateBatch(sent.base_offset)
        if base_sequence < expected:
            raise DuplicateBatch(None)
        raise OutOfOrderSequence(
            f"producer {producer_id}: sequence {base_sequence} arrived, {expected} expected;"
            " a batch before it is missing, resend from the first unacknowledged one"
        )

    def record(self, producer_id: int, base_sequence: int, record_count: int,
               base_offset: int) -> None:
        recent = self._recent.pop(producer_id, None) or []
        recent.append(SentBatch(base_sequence, record_count, base_offset))
        del recent[:-WINDOW]
        self._recent[producer_id] = recent
        while len(self._recent) > MAX_PRODUCERS:
            self._recent.popitem(last=False)

    def to_bytes(self) -> bytes:
        return msgspec.msgpack.encode([[pid, [list(b) for b in batches]]
                                       for pid, batches in self._recent.items()])

    @classmethod
    def from_bytes(cls, data: bytes) -> ProducerTable:
        table = cls()
        for pid, batches in msgspec.msgpack.decode(data, type=list[tuple[int, list[SentBatch]]]):
            table._recent[pid] = [SentBatch(*b) for b in batches]
        return table
