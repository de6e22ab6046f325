"""A source's stateless chain (``filter``/``map`` … ``to``) run over a whole batch of events.

Pushing event by event costs a Python call per event and operator; a chain with no branch
and no state can instead pass the batch through each operator in a loop of its own.  The
outputs are the same, in the same order: each operator keeps the events' order, and the
dead letters (an event that fails to decode or makes an operator raise) are sent after the
batch's outputs but in input order, so each output partition (and the DLQ's) receives
exactly what event-by-event processing sends it, however the input is cut into batches.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from runtime.dlq import dlq_topic

if TYPE_CHECKING:
    from runtime.consumer import Event
    from runtime.streams.stream import Run, Stream
    from runtime.streams.task import Task

# (input index, value): the records between two operators
Records = list[tuple[int, Any]]
Failures = list[tuple[int, Exception]]
_first = itemgetter(0)


def chain_run(root: Stream) -> Run | None:
    """The batch runner of ``root``'s chain, or None if it is not one (a branch, a stateful
    operator, or anything but ``filter``/``map`` on the way to one ``to``)."""
    stages: list[tuple[bool, Callable[[Any], Any]]] = []
    stream = root
    while len(stream.children) == 1:
        stage = stream.stages.get(stream.children[0])
        if stage is None:
            return None
        kind, arg, out = stage
        if kind == "to":
            if arg in {dlq_topic(topic) for topic in root.pipeline.topics}:
                return None  # outputs and dead letters in one topic: keep their interleaving
            return _runner(stages, arg)
        stages.append((kind == "filter", arg))
        assert out is not None
        stream = out
    return None


def _runner(stages: list[tuple[bool, Callable[[Any], Any]]], topic: str) -> Run:
    def run(task: Task, events: list[Event], decode: Callable[[Any], Any] | None) -> None:
        failed: Failures = []
        records = _decoded(task, events, decode, failed)
        for keep, fn in stages:
            records = _filter(records, fn, failed) if keep else _map(records, fn, failed)
        queue_of = task.queue
        queues: dict[str, list[list[Any]]] = {}
        for i, value in records:
            event = events[i]
            key = event.key
            if key.__class__ is str:
                queue = queues.get(key)
                if queue is None:
                    queue = queues[key] = queue_of(topic, key)
            else:
                queue = queue_of(topic, key)
            queue.append([value, key, None, event.timestamp])
        if failed:
            failed.sort(key=_first)
            for i, exc in failed:
                task.dead_letter(events[i], exc)
    return run


def _decoded(task: Task, events: list[Event], decode: Callable[[Any], Any] | None,
             failed: Failures) -> Records:
    """The events' values (decoded), and stream time moved to the latest of them."""
    records: Records = []
    append = records.append
    latest = task.ck.stream_time
    for i, event in enumerate(events):
        if decode is None:
            value = event.value
        else:
            try:
                value = decode(event.value)
            except Exception as exc:  # noqa: BLE001 - a value that does not decode: dead letter
                failed.append((i, exc))
                continue
        ts = event.timestamp
        if ts > latest:  # noqa: PLR1730 - faster than max()
            latest = ts
        append((i, value))
    task.ck.stream_time = latest
    return records


def _filter(records: Records, predicate: Callable[[Any], Any], failed: Failures) -> Records:
    out: Records = []
    append = out.append
    for record in records:
        try:
            if predicate(record[1]):
                append(record)
        except Exception as exc:  # noqa: BLE001 - any failure of user code: dead letter
            failed.append((record[0], exc))
    return out


def _map(records: Records, fn: Callable[[Any], Any], failed: Failures) -> Records:
    out: Records = []
    append = out.append
    for i, value in records:
        try:
            append((i, fn(value)))
        except Exception as exc:  # noqa: BLE001 - any failure of user code: dead letter
            failed.append((i, exc))
    return out
