"""The interface a connector implements (after Kafka Connect's SourceTask and SinkTask).

A source is a generator of records with offsets::

    class Counter(Source):
        def open(self, offsets):              # {source_partition: last stored offset}
            self.n = offsets.get("n", 0)
        def records(self):
            while True:
                self.n += 1
                yield SourceRecord({"n": self.n}, source_partition="n", source_offset=self.n)

``records()`` may yield ``None`` when it has nothing right now: the runtime then flushes
what it holds and calls ``records()``'s generator again after a short pause.  The runtime
sends each record, and once the broker acknowledged a record it stores its
``source_offset``; after a crash ``open`` gets the offsets of the last records that reached
the log, so a source that resumes after them neither loses nor repeats a record.

A sink takes batches::

    class Printer(Sink):
        def put(self, events):                # a list of runtime.client.Event
            for e in events:
                print(e.value)

``put`` returns once the batch is durable where it goes.  A sink whose destination can
keep the offsets in the same transaction as the data (a database) overrides
``stored_offsets`` and stores ``next_offsets`` with each batch: then nothing is applied
twice; otherwise the consumer group's committed offsets say where to resume
(at-least-once).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.client import Event
from runtime.connect.errors import BadRecord
from runtime.connect.records import SourceRecord
from runtime.consumer import Batch


class Connector:
    """Common to sources and sinks: the connector's name and its ``config`` table."""

    def __init__(self, name: str, config: dict[str, Any], task: int = 0, tasks: int = 1) -> None:
        self.name = name
        self.config = config
        self.task = task
        self.tasks = tasks

    def close(self) -> None:
        """Release what the connector holds (files, connections)."""


class Source(Connector):
    def open(self, offsets: dict[str, Any]) -> None:
        """Start from ``offsets`` (source partition -> offset of its last stored record)."""

    def records(self) -> Iterator[SourceRecord | None]:
        raise NotImplementedError


class Sink(Connector):
    # True: ``put`` may run on a thread of the runtime's own while the task polls and
    # converts the next batch (never two puts at once; only ``check`` runs beside a put,
    # so it must look at nothing but its event).  False (the default) keeps every call on
    # the task's main thread, for a sink holding something tied to its thread (an sqlite3
    # connection, say).
    pipelined = False
    # True: the sink has ``put_batches``, which the task calls instead of ``put`` for the
    # batches it may take (below).
    takes_batches = False

    def stored_offsets(self, topics: list[str]) -> dict[tuple[str, int], int] | None:
        """Next offset to read per (topic, partition) as the destination stored it, or None
        when the destination keeps no offsets (the group's committed ones count)."""
        return None

    def check(self, event: Event) -> None:
        """Raise BadRecord if ``event`` cannot be written (``errors.tolerance`` decides
        what follows); called on each event before its batch goes to ``put``."""

    def put(self, events: list[Event], next_offsets: dict[tuple[str, int], int]) -> None:
        """Apply ``events`` durably; ``next_offsets`` is where each partition resumes after
        them (store it with the data if the destination can)."""
        raise NotImplementedError

    def put_batches(self, batches: list[Batch], next_offsets: dict[tuple[str, int], int]
                    ) -> None:
        """``put`` for the records as the consumer took them off the wire (a ``Batch`` of
        one partition's records in offset order, no ``Event`` each): a sink going through
        many rows a second spends a fifth of its CPU building events it does not need.
        Called only when ``takes_batches`` is True, the connector has no transforms and a
        json or msgpack converter, and every record has a key and a map value or none (a
        tombstone): such a record needs no conversion and passes any ``check``.  Anything
        else goes to ``put`` as events."""
        raise NotImplementedError

    def take_rejected(self) -> list[tuple[Event, BadRecord]]:
        """Events of the last ``put`` the destination refused, each with why (handled per
        ``errors.tolerance`` before the offsets are committed); none by default."""
        return []
