"""The dead letters page's data, through ``runtime.dlq`` (what ``rail dlq`` uses): each dead
letter with its error and stack, replay of the selected ones, purge."""

from __future__ import annotations

from typing import Any

from brokerd import protocol as p
from runtime import dlq
from runtime.client import Event
from runtime.connection import BrokerError, Connection
from runtime.console.decoding import shown

MAX_LISTED = 5000  # the newest dead letters a page lists (the count says how many exist)


def list_dlqs(conn: Connection) -> list[dict[str, Any]]:
    """Every dead-letter topic with how many letters it holds."""
    topics = conn.call(p.Metadata()).topics
    return [{"dlq": t.name, "source": t.name[:-len(dlq.SUFFIX)],
             "count": sum(x.end_offset - x.start_offset for x in t.partitions)}
            for t in topics if t.name.endswith(dlq.SUFFIX)]


def list_letters(conn: Connection, topic: str) -> dict[str, Any]:
    """The dead letters of ``topic`` (its source name), newest last, with replay state."""
    name = dlq.dlq_name(topic)
    infos = dlq.partitions(conn, name)
    if infos is None:
        raise BrokerError("UNKNOWN_TOPIC", f"there is no dead-letter topic {name}")
    total = sum(i.end_offset - i.start_offset for i in infos)
    events: list[Event] = []
    per_partition = max(1, MAX_LISTED // max(1, len(infos)))
    for info in infos:
        lo = max(info.start_offset, info.end_offset - per_partition)
        events.extend(dlq.fetch_range(conn, name, info.partition, lo, info.end_offset))
    record = dlq.load_record(conn, name) if events else dlq.ReplayRecord(name)
    return {"dlq": name, "source": topic, "total": total,
            "letters": [letter_json(e, record) for e in events]}


def letter_json(event: Event, record: dlq.ReplayRecord) -> dict[str, Any]:
    h = dlq.header
    return {"partition": event.partition, "offset": event.offset,
            "timestamp": event.timestamp,
            "source": h(event, "rail.source.topic"),
            "source_partition": h(event, "rail.source.partition"),
            "source_offset": h(event, "rail.source.offset"),
            "attempts": h(event, "rail.attempts"), "error": h(event, "rail.error"),
            "stack": h(event, "rail.traceback"), "key": shown(event.key),
            "value": shown(event.value), "replayed": record.is_replayed(event),
            "replayed_to": record.where(event),
            "refailure_of": h(event, dlq.REPLAYED_FROM)}


def replay_selected(broker: str, topic: str, picks: list[tuple[int, int]]) -> dict[str, Any]:
    """Replay each ``(partition, offset)`` picked on the page, each at most once (the
    ledger of ``runtime.dlq`` skips one replayed before)."""
    sent: list[str] = []
    skipped = 0
    for partition, offset in sorted(set(picks)):
        result = dlq.replay(broker, topic, dlq.Selection(partition=partition,
                                                         offsets=(offset, offset)))
        sent.extend(dlq.location(e.topic, e.partition, e.offset) for e in result.selected)
        skipped += result.skipped
    return {"replayed": sent, "skipped": skipped}


def purge(broker: str, topic: str) -> dict[str, Any]:
    moved = dlq.purge(broker, dlq.dlq_name(topic), None)
    return {"purged": sum(new - old for old, new in moved.values())}
