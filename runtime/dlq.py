"""Dead-letter topics: where a worker puts an event its handler kept failing on.

An event of ``orders`` that fails every attempt goes to ``orders.dlq`` with its original
key, value and headers, plus ``rail.*`` headers saying what went wrong and where it came
from.  ``replay`` sends such events back to their source topic without the ``rail.*``
headers, so a fixed worker can process them again.
"""

from __future__ import annotations

import traceback
from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.client import Event, Producer
from runtime.connection import BrokerError, Connection

SUFFIX = ".dlq"
HEADER_PREFIX = "rail."


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + SUFFIX


def dead_letter_headers(event: Event, error: BaseException, attempts: int) -> dict[str, Any]:
    """The original headers plus the ``rail.*`` ones describing the failure."""
    headers: dict[str, Any] = dict(event.headers or {})
    headers.update({
        "rail.error": f"{type(error).__name__}: {error}",
        "rail.traceback": "".join(traceback.format_exception(error)),
        "rail.attempts": str(attempts),
        "rail.source.topic": event.topic,
        "rail.source.partition": str(event.partition),
        "rail.source.offset": str(event.offset),
    })
    return headers


def send_to_dlq(producer: Producer, event: Event, error: BaseException, attempts: int) -> None:
    """Queue ``event`` on its dead-letter topic (the caller flushes before committing)."""
    producer.send(dlq_topic(event.topic), event.value, key=event.key,
                  headers=dead_letter_headers(event, error, attempts))


def original_headers(headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """``headers`` without the ``rail.*`` ones (None when nothing is left)."""
    kept = {k: v for k, v in (headers or {}).items() if not k.startswith(HEADER_PREFIX)}
    return kept or None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def source_topic(event: Event) -> str:
    """Where a dead-lettered event came from (its header, else the name minus ``.dlq``)."""
    source = (event.headers or {}).get("rail.source.topic")
    if source is not None:
        return _text(source)
    return event.topic[:-len(SUFFIX)] if event.topic.endswith(SUFFIX) else event.topic


_records = msgspec.msgpack.Decoder(list[p.WireRecord])


def fetch_range(conn: Connection, topic: str, partition: int, start: int, end: int,
                max_wait_ms: int = 0) -> list[Event]:
    """The events of ``topic[partition]`` from ``start`` up to (not including) ``end``."""
    events: list[Event] = []
    offset = start
    while offset < end:
        reply = conn.call(p.Fetch(topic=topic, partition=partition, offset=offset,
                                  max_wait_ms=max_wait_ms))
        got = events_of_fetch(reply)
        if not got:
            break
        events.extend(e for e in got if e.offset < end)
        offset = got[-1].offset + 1
    return events


def events_of_fetch(reply: p.FetchReply) -> list[Event]:
    """Decode a fetch reply's stored batches into events at or after its ``offset``."""
    out: list[Event] = []
    for base, ts, raw in reply.batches:
        for i, r in enumerate(_records.decode(raw)):
            if base + i >= reply.offset:
                out.append(Event(reply.topic, reply.partition, base + i, r.value, r.key,
                                 r.headers, ts if r.timestamp is None else r.timestamp))
    return out


def read_all(conn: Connection, topic: str) -> list[Event]:
    """Every event currently in ``topic``, partition by partition (fetch, not a group)."""
    meta = conn.call(p.Metadata(topics=[topic]))
    events: list[Event] = []
    for info in meta.topics[0].partitions:
        events.extend(fetch_range(conn, topic, info.partition, info.start_offset,
                                  info.end_offset))
    return events


def replay(broker: str, topic: str) -> int:
    """Send every event of the dead-letter topic ``topic`` back to its source; return count."""
    if not topic.endswith(SUFFIX):
        topic = dlq_topic(topic)
    conn = Connection(broker)
    try:
        events = read_all(conn, topic)
    finally:
        conn.close()
    with Producer(broker) as producer:
        for event in events:
            producer.send(source_topic(event), event.value, key=event.key,
                          headers=original_headers(event.headers))
    return len(events)


__all__ = ["dlq_topic", "dead_letter_headers", "send_to_dlq", "original_headers",
           "source_topic", "fetch_range", "events_of_fetch", "read_all", "replay", "BrokerError"]
