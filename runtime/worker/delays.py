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

Cancellable: ``send_delayed`` returns the event's delay id, which names the partition of
``rail.delayed`` it is parked in; ``cancel_delayed`` writes a cancel marker behind it in that
partition, so the mover always reads the event first and the marker after it (also when it
reads the partition again after a crash) and drops the event if it still holds it.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import time
import uuid
from typing import Any

from brokerd import protocol as p
from runtime.client import Producer

DELAY_TOPIC = "rail.delayed"
MOVER_GROUP = "rail.delays"  # the mover's consumer group, and its worker name in rail status
TARGET = "rail.delay.topic"
DUE = "rail.delay.due-ms"  # unix time in ms, as text (header values are str or bytes)
DELAY_ID = "rail.delay.id"  # on a parked event: the id send_delayed returned
PARKING = (TARGET, DUE, DELAY_ID)  # the headers a forward leaves out
CANCEL = "rail.delay.cancel"  # on a cancel marker: the delay id it cancels
_ID = re.compile(r"([0-9]{1,4})-([0-9a-f]{32})")  # partition of rail.delayed - uuid4 hex
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
                 at: float | dt.datetime | None = None) -> str:
    """Queue ``value`` for ``topic``, delivered after ``delay_s`` seconds or at ``at``, and
    return its delay id (for ``cancel_delayed``).

    The event's key picks its partition of ``topic`` when it is forwarded, as a plain send
    would, and its partition of ``rail.delayed`` (a keyless one: any)."""
    if not isinstance(topic, str) or not p.valid_topic_name(topic) or topic == DELAY_TOPIC:
        raise ValueError(f"cannot delay an event for topic {topic!r} (a topic name is "
                         "letters, digits, '.', '_', '-', up to 249)")
    due = due_ms(delay_s, at)
    count = producer.partitions_for(DELAY_TOPIC)
    partition = random.randrange(count) if key is None else p.partition_for_key(key, count)
    delay_id = f"{partition}-{uuid.uuid4().hex}"
    producer.send(DELAY_TOPIC, value, key=key, partition=partition,
                  headers={**(headers or {}), TARGET: topic, DUE: str(due),
                           DELAY_ID: delay_id})
    return delay_id


def cancel_delayed(producer: Producer, delay_id: str) -> None:
    """Cancel the delayed event ``send_delayed`` returned ``delay_id`` for: a marker queued
    behind it in its partition of ``rail.delayed``.  The mover drops the event when it reads
    the marker before the event falls due; after that the marker changes nothing (the
    event was delivered).  Send it once the event's own send is acknowledged (a flush), or
    from the producer that sent it: the marker must land after the event."""
    producer.send(DELAY_TOPIC, None, partition=delay_partition(delay_id),
                  headers={CANCEL: delay_id})


def delay_partition(delay_id: str) -> int:
    """The partition of ``rail.delayed`` a delay id names; ValueError for what is not one."""
    match = _ID.fullmatch(delay_id) if isinstance(delay_id, str) else None
    if match is None:
        raise ValueError(f"{delay_id!r} is not a delay id (send_delayed returns them: "
                         "PARTITION-32 hex digits)")
    return int(match.group(1))


def forward_producer_id(partition: int, offset: int) -> int:
    """The producer id of the forward of ``rail.delayed[partition]@offset``."""
    if not (0 <= partition < 1024 and 0 <= offset < 1 << 42):
        raise ValueError(f"{DELAY_TOPIC}[{partition}]@{offset} is past what ids can name")
    return PRODUCER_TAG | partition << 42 | offset
