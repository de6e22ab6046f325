"""A source's stateless chain (``filter``/``map`` … ``to``) run over a whole batch of records.

Pushing event by event costs a Python call per event and operator; a chain with no branch
and no state can instead take a consumer ``Batch`` (the records as they came off the wire,
no ``Event`` each) and pass its values through each operator with the builtin ``map``, a
loop in C.  The outputs are the same, in the same order: each operator keeps the records'
order, and the dead letters (a record that fails to decode or makes an operator raise)
are sent after the batch's outputs but in input order, so each output partition (and the
DLQ's) receives exactly what event-by-event processing sends it, however the input is cut
into batches.  Each operator is called once per record that reaches it, failing or not.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import compress, repeat
from typing import TYPE_CHECKING, Any

from runtime.consumer import Event
from runtime.dlq import dlq_topic

if TYPE_CHECKING:
    from brokerd.protocol import WireRecord
    from runtime.consumer import Batch
    from runtime.streams.stream import Stream
    from runtime.streams.task import Task

# Runs a task's batch (and the value decoder, or None) through the whole chain.
BatchRun = Callable[["Task", "Batch", "Callable[[Any], Any] | None"], None]


def chain_run(root: Stream) -> BatchRun | None:
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


def _runner(stages: list[tuple[bool, Callable[[Any], Any]]], topic: str) -> BatchRun:
    def run(task: Task, batch: Batch, decode: Callable[[Any], Any] | None) -> None:
        records = batch.records
        cols = _Columns([r.value for r in records], records, _stamps(batch))
        if decode is not None:
            cols.map(decode)
        if cols.stamps:  # stream time: the latest of the records that decode
            latest = max(cols.stamps)
            if latest > task.ck.stream_time:  # noqa: PLR1730 - faster than max()
                task.ck.stream_time = latest
        for keep, fn in stages:
            if keep:
                cols.filter(fn)
            else:
                cols.map(fn)
        _queue(task, topic, cols)
        if cols.failed:
            _dead_letters(task, batch, cols.failed)
    return run


def _dead_letters(task: Task, batch: Batch, failed: list[tuple[WireRecord, Exception]]) -> None:
    """Send the records that failed to the DLQ, in input order."""
    at = {id(r): i for i, r in enumerate(batch.records)}
    stamps = _stamps(batch)
    for record, exc in sorted(failed, key=lambda f: at[id(f[0])]):
        i = at[id(record)]
        task.dead_letter(Event(batch.topic, batch.partition, batch.base_offset + i,
                               record.value, record.key, record.headers, stamps[i]), exc)


def _stamps(batch: Batch) -> list[int]:
    """Each record's timestamp (the batch's where a record has none)."""
    stamps = [r.timestamp for r in batch.records]
    if None in stamps:
        ts = batch.timestamp
        return [ts if t is None else t for t in stamps]
    return stamps  # type: ignore[return-value]


class _Columns:
    """The records between two operators, column by column, each operator applied with
    ``map`` (one C loop per operator instead of a Python one): the values, the input
    records they came from, their timestamps.  A record whose operator raised leaves the
    columns for ``failed``, with the error."""

    def __init__(self, values: list[Any], records: list[WireRecord], stamps: list[int]) -> None:
        self.values = values
        self.records = records
        self.stamps = stamps
        self.failed: list[tuple[WireRecord, Exception]] = []

    def map(self, fn: Callable[[Any], Any]) -> None:
        values = self.values
        out: list[Any] = []
        lost: list[int] = []  # positions whose call raised, ascending
        while True:
            try:  # list.extend keeps what map gave before it raised
                out.extend(map(fn, values[len(out) + len(lost):] if lost else values))
                break
            except Exception as exc:  # noqa: BLE001 - any failure of user code: dead letter
                at = len(out) + len(lost)
                lost.append(at)
                self.failed.append((self.records[at], exc))
        self.values = out
        if lost:
            gone = set(lost)
            keep = [i not in gone for i in range(len(values))]
            self.records = list(compress(self.records, keep))
            self.stamps = list(compress(self.stamps, keep))

    def filter(self, predicate: Callable[[Any], Any]) -> None:
        flags: list[Any] = []
        values = self.values
        while True:
            try:
                flags.extend(map(predicate, values[len(flags):] if flags else values))
                break
            except Exception as exc:  # noqa: BLE001 - any failure of user code: dead letter
                self.failed.append((self.records[len(flags)], exc))
                flags.append(False)  # dropped like a record that does not pass
        self.values = list(compress(values, flags))
        self.records = list(compress(self.records, flags))
        self.stamps = list(compress(self.stamps, flags))


def _queue(task: Task, topic: str, cols: _Columns) -> None:
    """Queue the outputs ``[value, key, None, timestamp]`` for their partitions, encoded."""
    keys = [r.key for r in cols.records]
    records = list(zip(cols.values, keys, repeat(None), cols.stamps))
    if not records:
        return
    if task.partitions[topic] == 1:
        task.add_encoded(topic, 0, records)
        return
    by_part: dict[int, list[Any]] = {}
    part_of = task.partition_of
    for record in records:
        part = part_of(topic, record[1])
        queue = by_part.get(part)
        if queue is None:
            queue = by_part[part] = []
        queue.append(record)
    for part, queue in sorted(by_part.items()):
        task.add_encoded(topic, part, queue)
