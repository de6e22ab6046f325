"""Dead letters: how a worker writes them, how they are named, found and read.

An event of ``orders`` that fails every attempt goes to ``orders.dlq`` with its original
key, value and headers, plus ``rail.*`` headers saying what went wrong and where it came
from.  A replayed one carries ``rail.replayed-from`` = ``<dlq>[partition]@offset``.
"""

from __future__ import annotations

import re
import traceback
from typing import Any

from brokerd import protocol as p
from runtime.client import Event, Producer, events_of_fetch
from runtime.connection import BrokerError
from runtime.routing import Link

SUFFIX = ".dlq"
HEADER_PREFIX = "rail."
REPLAYED_FROM = "rail.replayed-from"
LEDGER_SUFFIX = ".replayed"
CURSOR_GROUP_PREFIX = "rail.dlq-replay."
_LOCATION = re.compile(r"^(?P<topic>.+)\[(?P<partition>\d+)\]@(?P<offset>\d+)$")


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``: ``topic.dlq`` (shortened with a hash when a
    name near the limit would not fit)."""
    return p.fitted_name("", topic, SUFFIX)


def dlq_name(topic: str) -> str:
    """The DLQ a user means by ``topic``: ``topic`` itself when it ends in ``.dlq``."""
    return topic if topic.endswith(SUFFIX) else dlq_topic(topic)


def ledger_topic(dlq: str) -> str:
    """The compacted topic recording what was replayed from ``dlq``: ``<dlq>.replayed``."""
    return p.fitted_name("", dlq, LEDGER_SUFFIX)


def cursor_group(dlq: str) -> str:
    """The group whose committed offsets are ``dlq``'s replay cursor."""
    return p.fitted_name(CURSOR_GROUP_PREFIX, dlq, "")


def location(topic: str, partition: int, offset: int) -> str:
    """``topic[partition]@offset``, the way Rail writes a record's place."""
    return f"{topic}[{partition}]@{offset}"


def parse_location(text: str) -> tuple[str, int, int] | None:
    """``(topic, partition, offset)`` of a ``topic[partition]@offset`` text, else None."""
    m = _LOCATION.match(text)
    return (m["topic"], int(m["partition"]), int(m["offset"])) if m else None


# -- writing dead letters (the worker host) ---------------------------------------------
def dead_letter_headers(event: Event, error: BaseException, attempts: int) -> dict[str, Any]:
    """The original headers plus the ``rail.*`` ones describing the failure.

    A replayed event's ``rail.replayed-from`` is among its headers and stays: it marks the
    new dead letter as a re-failure of the one it was replayed from."""
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


def text(value: Any) -> str:
    """A header or value as text (bytes decoded, invalid UTF-8 replaced)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def header(event: Event, name: str) -> str | None:
    value = (event.headers or {}).get(name)
    return None if value is None else text(value)


def source_topic(event: Event) -> str:
    """Where a dead-lettered event came from (its header, else the name minus ``.dlq``)."""
    source = header(event, "rail.source.topic")
    if source is not None:
        return source
    return event.topic[:-len(SUFFIX)] if event.topic.endswith(SUFFIX) else event.topic


def replay_headers(event: Event) -> dict[str, Any]:
    """The headers a replayed dead letter is sent with: its own, plus where it came from."""
    headers = original_headers(event.headers) or {}
    headers[REPLAYED_FROM] = location(event.topic, event.partition, event.offset)
    return headers


# -- reading ----------------------------------------------------------------------------


def fetch_range(conn: Link, topic: str, partition: int, start: int, end: int,
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


def partitions(conn: Link, topic: str) -> list[p.PartitionInfo] | None:
    """``topic``'s partitions with their start and end offsets, or None if it is missing."""
    try:
        return list(conn.call(p.Metadata(topics=[topic])).topics[0].partitions)
    except BrokerError as exc:
        if exc.code == "UNKNOWN_TOPIC":
            return None
        raise


def read_all(conn: Link, topic: str) -> list[Event]:
    """Every event currently in ``topic``, partition by partition (fetch, not a group)."""
    events: list[Event] = []
    for info in partitions(conn, topic) or []:
        events.extend(fetch_range(conn, topic, info.partition, info.start_offset,
                                  info.end_offset))
    return events
