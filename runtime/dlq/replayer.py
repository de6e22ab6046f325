"""Replaying dead letters: each selected one sent back to its source at most once."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.client import Event, Producer
from runtime.connection import BrokerError
from runtime.dlq import ledger
from runtime.dlq.lease import WAIT_S, Lease
from runtime.dlq.ledger import ReplayRecord
from runtime.dlq.letters import (dlq_name, fetch_range, location, partitions, replay_headers,
                                 source_topic)
from runtime.dlq.selection import Selection
from runtime.routing import Link, connect


@dataclass
class ReplayResult:
    """What a replay did (or, on a dry run, would do)."""

    dlq: str
    selected: list[Event] = field(default_factory=list)
    """The dead letters sent (or, on a dry run, that would be sent), in DLQ order."""
    sent_to: dict[tuple[int, int], str] = field(default_factory=dict)
    recovered: int = 0
    """Dead letters an interrupted earlier replay had sent, found and recorded now."""
    skipped: int = 0
    """Dead letters in the selection skipped because they had been replayed already."""


def candidates(conn: Link, record: ReplayRecord, selection: Selection,
               result: ReplayResult) -> dict[int, int]:
    """Fill ``result.selected``; return the cursor each partition may move to."""
    moves: dict[int, int] = {}
    for info in partitions(conn, record.dlq) or []:
        if selection.partition is not None and info.partition != selection.partition:
            continue
        lo, hi = selection.bounds(info)
        cursor = max(record.cursors.get(info.partition, 0), info.start_offset)
        if not selection.again and selection.offsets is None and lo < cursor:
            if not selection.filtered:  # dead letters are dense: one per offset
                result.skipped += min(cursor, hi) - lo
            lo = min(cursor, hi)  # below the cursor everything is replayed
        for event in fetch_range(conn, record.dlq, info.partition, lo, hi):
            if not selection.matches(event):
                continue
            if not selection.again and record.is_replayed(event):
                result.skipped += 1
                continue
            result.selected.append(event)
        if not selection.filtered and lo <= cursor < hi:
            moves[info.partition] = hi
    return moves


def replay(broker: str, topic: str, selection: Selection | None = None,
           dry_run: bool = False, wait_s: float = WAIT_S) -> ReplayResult:
    """Send the selected dead letters of ``topic``'s DLQ back to their sources, each once.

    Raises ``BrokerError``: ``UNKNOWN_TOPIC`` when the DLQ does not exist,
    ``REPLAY_RUNNING`` when another replay of it does not end within ``wait_s``."""
    selection = selection or Selection()
    dlq = dlq_name(topic)
    conn = connect(broker, timeout_s=10.0)
    try:
        if partitions(conn, dlq) is None:
            raise BrokerError("UNKNOWN_TOPIC", f"there is no dead-letter topic {dlq}")
        if dry_run:
            result, record = ReplayResult(dlq), ledger.load_record(conn, dlq)
            if record.interrupted:
                result.recovered = ledger.recover(conn, None, record)
            candidates(conn, record, selection, result)
            return result
        lease = Lease(broker, dlq)
        lease.acquire(conn, wait_s)
        try:
            with Producer(broker, acks="all") as producer:
                return _replay(lease, conn, producer, dlq, selection)
        finally:
            lease.release(conn)
    finally:
        conn.close()


def _replay(lease: Lease, conn: Link, producer: Producer, dlq: str,
            selection: Selection) -> ReplayResult:
    result = ReplayResult(dlq)
    record = ledger.load_record(conn, dlq)
    if record.interrupted:
        result.recovered = ledger.recover(conn, producer, record)
    moves = candidates(conn, record, selection, result)
    if result.selected:
        ledger.ensure_ledger(conn, dlq)
        lease.check()
        ledger.send_intent(conn, producer, dlq, result.selected)
        send_replays(producer, result, lease)
        ledger.record_replays(producer, dlq, result.selected, result.sent_to)
    ledger.move_cursor(lease, conn, record, moves)
    return result


def send_replays(producer: Producer, result: ReplayResult, lease: Lease | None = None) -> None:
    """Send every selected dead letter back to its source and wait for the acks; stop
    early if the lease is lost (what went is found by the next replay's recovery)."""
    for i, event in enumerate(result.selected):
        if lease is not None and i % 100 == 0 and lease.lost:
            producer.flush()
            lease.check()
        def sent(partition: int, offset: int, error: BrokerError | None,
                 event: Event = event) -> None:
            if error is None:
                result.sent_to[event.partition, event.offset] = location(
                    source_topic(event), partition, offset)
        producer.send(source_topic(event), event.value, key=event.key,
                      headers=replay_headers(event), callback=sent)
    ledger.flush(producer)
