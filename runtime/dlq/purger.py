"""Deleting dead letters for good: the DLQ's start offset moves (``delete_records``)."""

from __future__ import annotations

from brokerd import protocol as p
from runtime.client import Producer
from runtime.connection import BrokerError
from runtime.dlq import ledger
from runtime.dlq.letters import dlq_name, ledger_topic, partitions
from runtime.routing import Link, connect


def purge(broker: str, topic: str, before: int | None,
          partition: int | None = None) -> dict[int, tuple[int, int]]:
    """Delete the DLQ's dead letters below ``before`` (None: all) in each partition (or in
    ``partition``), then forget their ledger records.  Returns ``{partition: (old start,
    new start)}``.  Raises ``BrokerError("UNKNOWN_TOPIC")`` when there is no such DLQ."""
    dlq = dlq_name(topic)
    conn = connect(broker, timeout_s=10.0)
    try:
        infos = partitions(conn, dlq)
        if infos is None:
            raise BrokerError("UNKNOWN_TOPIC", f"there is no dead-letter topic {dlq}")
        moved: dict[int, tuple[int, int]] = {}
        for info in infos:
            if partition is None or info.partition == partition:
                moved[info.partition] = (info.start_offset,
                                         _move_start(conn, dlq, info, before))
        _forget(broker, conn, dlq, {part: new for part, (_, new) in moved.items()})
        return moved
    finally:
        conn.close()


def _move_start(conn: Link, dlq: str, info: p.PartitionInfo, before: int | None) -> int:
    target = -1 if before is None else min(before, info.end_offset)
    if target != -1 and target <= info.start_offset:
        return info.start_offset
    return int(conn.call(p.DeleteRecords(topic=dlq, partition=info.partition,
                                         offset=target)).start_offset)


def _forget(broker: str, conn: Link, dlq: str, starts: dict[int, int]) -> None:
    """Tombstone the ledger records of purged dead letters, so compaction drops them."""
    if partitions(conn, ledger_topic(dlq)) is None:
        return
    record = ledger.load_record(conn, dlq)
    gone = [(part, off) for part, off in record.replayed if off < starts.get(part, -1)]
    if not gone:
        return
    with Producer(broker, acks="all") as producer:
        for part, off in gone:
            producer.send(ledger_topic(dlq), None, key=f"{part}@{off}")
        ledger.flush(producer)
