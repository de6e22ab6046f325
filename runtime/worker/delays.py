"""Delayed and scheduled delivery: ``send_delayed`` parks an event in the internal topic
``rail.delayed``; the mover (``runtime/worker/mover.py``, run by ``rail up`` when
``[supervisor] delays = true``) forwards it to its topic once its time has come.

Durable because both halves are log writes: the parked event is acked like any send, and the
mover commits its offset in ``rail.delayed`` only after the forwarded copy is acked with
``acks: "all"`` (fsynced).  Never early: the mover forwards an event only once the wall clock
passed its due time.  No duplicates: the forward is an idempotent produce whose producer id is
derived from the parked event's place (partition, offset) in ``rail.delayed``, at sequence 0,
so a forward replayed after a crash of the mover is recognised by the broker and dropped
(docs/protocol.md §8: the broker remembers the last 10,000 producers of each partition).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from runtime.client import Producer

DELAY_TOPIC = "rail.delayed"
MOVER_GROUP = "rail.delays"  # the mover's consumer group, and its worker name in rail status
TARGET = "rail.delay.topic"
DUE = "rail.delay.due-ms"  # unix time in ms, as text (header values are str or bytes)
PRODUCER_TAG = 1 << 52  # forward producer ids: tag | partition << 42 | offset  (< 2**53)


def due_ms(delay_s: float | None = None, at: float | dt.datetime | None = None) -> int:
    """When an event sent now with ``delay_s`` (seconds from now) or ``at`` (unix seconds or
    an aware datetime) falls due, in unix ms; ValueError unless exactly one is given."""
    if (delay_s is None) == (at is None):
        raise ValueError("give exactly one of delay_s (seconds from now) and at (a time)")
    if delay_s is not None:
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, not {delay_s}")
        return int(time.time() * 1000 + delay_s * 1000 + 0.999)  # rounded up: never early
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            raise ValueError("at: give an aware datetime (with a tzinfo), or unix seconds")
        at = at.timestamp()
    assert at is not None
    return int(at * 1000 + 0.999)


def send_delayed(producer: Producer, topic: str, value: Any, *, key: Any = None,
                 headers: dict[str, Any] | None = None, delay_s: float | None = None,
                 at: float | dt.datetime | None = None) -> None:
    """Queue ``value`` for ``topic``, delivered after ``delay_s`` seconds or at ``at``.

    The event's key picks its partition of ``topic`` when it is forwarded, as a plain send
    would; ``Producer.send(delay_s=/at=)`` should delegate here."""
    if not topic or topic == DELAY_TOPIC:
        raise ValueError(f"cannot delay an event for topic {topic!r}")
    due = due_ms(delay_s, at)
    producer.send(DELAY_TOPIC, value, key=key,
                  headers={**(headers or {}), TARGET: topic, DUE: str(due)})


def forward_producer_id(partition: int, offset: int) -> int:
    """The producer id of the forward of ``rail.delayed[partition]@offset``."""
    if not (0 <= partition < 1024 and 0 <= offset < 1 << 42):
        raise ValueError(f"{DELAY_TOPIC}[{partition}]@{offset} is past what ids can name")
    return PRODUCER_TAG | partition << 42 | offset
