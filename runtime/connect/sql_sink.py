"""Database sinks: upsert by key, delete on a tombstone, offsets in the same transaction.

    config = {path = "orders.db", table = "orders"}                        # SQLite
    config = {table = "orders", key_column = "id", columns = ["id", "name", "qty"]}

Without ``columns`` the table is ``(key TEXT PRIMARY KEY, value <JSON>)``, created if
missing, and holds each key's value as JSON.  With ``columns`` the table must exist with
``key_column`` as its primary key; each event's value is a map whose fields fill the
columns (a missing field is NULL, a map or list field is stored as JSON text), and the key
column takes the event's key, or the value's field of that name when the event has none.

Each ``put`` is one transaction: the batch reduced to its last change per key (upsert or
delete), applied, and ``rail_connect_offsets`` (connector, topic, partition, next_offset)
updated.  A crash before the commit leaves the database as it was and the events come
again; after it, the task reads the offsets back and skips what is applied.  So the table
holds each key's latest value exactly as the topic does (exactly-once into the database).
"""

from __future__ import annotations

import json
import re
import sqlite3
from itertools import chain
from typing import Any

from runtime.client import Event
from runtime.connect.api import Sink
from runtime.connect.errors import BadRecord, ConnectorConfigError
from runtime.consumer import Batch

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
OFFSETS_TABLE = "rail_connect_offsets"
NESTED = frozenset({dict, list})  # a column value of these types is stored as JSON text


def sql_name(name: str, where: str) -> str:
    if not NAME.match(name):
        raise ConnectorConfigError(f"{where}: {name!r} is not a plain SQL name (letters, "
                                   "digits, '_', optionally schema.name)")
    return name


class TableSink(Sink):
    """What both databases share: the config, the rows, the batch reduced per key."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        where = f"connectors.{self.name}.config"
        if "table" not in self.config:
            raise ConnectorConfigError(f"{where}.table: the table to write is required")
        self.table = sql_name(str(self.config["table"]), f"{where}.table")
        self.document = "columns" not in self.config
        self.key_column = sql_name(str(self.config.get("key_column", "key")),
                                   f"{where}.key_column")
        cols = ["key", "value"] if self.document else list(self.config["columns"])
        self.columns = [sql_name(str(c), f"{where}.columns") for c in cols]
        self.key_index = self.columns.index(self.key_column) if self.key_column in self.columns \
            else -1
        if self.document and self.key_column != "key":
            raise ConnectorConfigError(f"{where}.key_column: without columns the key column "
                                       "is 'key'")
        if self.key_column not in self.columns:
            raise ConnectorConfigError(f"{where}.columns: must include the key column "
                                       f"{self.key_column!r}")
        self.offsets_table = sql_name(str(self.config.get("offsets_table", OFFSETS_TABLE)),
                                      f"{where}.offsets_table")
        self.rejected: list[tuple[Event, BadRecord]] = []

    def key_of(self, event: Event) -> Any:
        key = event.key
        if key is None and not self.document and isinstance(event.value, dict):
            key = event.value.get(self.key_column)
        if key is None:
            raise BadRecord(f"no key: a {self.table} row needs the event's key or a "
                            f"{self.key_column!r} field")
        return key.decode() if isinstance(key, bytes) else key

    def check(self, event: Event) -> None:
        value = event.value
        if event.key is not None and (value is None or self.document
                                      or value.__class__ is dict):
            return  # the common case, without a call
        self.key_of(event)
        if value is not None and not self.document and not isinstance(value, dict):
            raise BadRecord(f"a {self.table} row needs a map value, got "
                            f"{type(value).__name__}")

    def rows(self, changes: list[tuple[Any, Any]]) -> list[list[Any]]:
        """The rows of the upserts among ``changes`` (key, value; None: a delete): in one
        comprehension, and the map or list cells looked for in one pass over them all (a
        call and a type check a row were a tenth of a PostgreSQL sink's CPU)."""
        if self.document:
            return [[str(k), json.dumps(v)] for k, v in changes if v is not None]
        cols, at = self.columns, self.key_index
        before, after = cols[:at], cols[at + 1:]
        rows = [[*map(v.get, before), k, *map(v.get, after)]
                for k, v in changes if v is not None]
        if NESTED.isdisjoint(map(type, chain.from_iterable(rows))):
            return rows
        for row in rows:
            key = row[at]
            row[:] = map(cell, row)
            row[at] = key
        return rows

    def last_events(self, events: list[Event], stored: dict[tuple[str, int], int]
                    ) -> dict[Any, Event]:
        """Each key's last event in ``events`` (a nil value deletes), leaving out the events
        below the offsets ``stored`` in the database (read in the transaction that applies
        them: a task that owned the partition before a rebalance may have committed them
        meanwhile)."""
        first: dict[tuple[str, int], int] = {}
        for e in events:  # each partition's first offset (the events are in offset order)
            first.setdefault((e.topic, e.partition), e.offset)
        if any(stored.get(tp, 0) > offset for tp, offset in first.items()):
            events = [e for e in events if e.offset >= stored.get((e.topic, e.partition), 0)]
        last: dict[Any, Event] = {}
        key_of = self.key_of
        for e in events:
            key = e.key
            if key is None or key.__class__ is bytes:
                key = key_of(e)
            last[key] = e
        if mixed(last):  # again, in order: "5" and 5 are one row
            last = {}
            for e in events:
                key = e.key
                if key is None or key.__class__ is bytes:
                    key = key_of(e)
                last[str(key)] = e
        return last

    @staticmethod
    def last_values(batches: list[Batch], stored: dict[tuple[str, int], int]
                    ) -> dict[Any, Any]:
        """``last_events`` for ``put_batches``: each key's last value (None: delete), the
        records below the ``stored`` offsets cut off; every record has a key (the task
        sends no other this way), a ``bytes`` one taken as UTF-8 text as ``key_of`` does."""
        last: dict[Any, Any] = {}
        for b in batches:
            skip = stored.get((b.topic, b.partition), 0) - b.base_offset
            for r in b.records[skip:] if skip > 0 else b.records:
                last[r.key] = r.value
        if any(k.__class__ is bytes for k in last) or mixed(last):  # again, in order:
            text = mixed({k.decode() if k.__class__ is bytes else k: 0 for k in last})
            last = {}  # b"1" and "1" are one row, and with text keys about, "5" and 5
            for b in batches:
                skip = stored.get((b.topic, b.partition), 0) - b.base_offset
                for r in b.records[skip:] if skip > 0 else b.records:
                    key = r.key
                    key = key.decode() if key.__class__ is bytes else key
                    last[str(key) if text else key] = r.value
        return last

    def refused(self, event: Event, error: Exception) -> None:
        """The database refused ``event`` alone (a value its column type rejects, a
        constraint): the task handles it per ``errors.tolerance``."""
        self.rejected.append((event, BadRecord(f"{type(error).__name__}: "
                                               f"{str(error).strip().splitlines()[0]}")))

    def take_rejected(self) -> list[tuple[Event, BadRecord]]:
        rejected, self.rejected = self.rejected, []
        return rejected


def mixed(last: dict[Any, Any]) -> bool:
    """Keys of text and of other types together: the database takes ``"5"`` and ``5`` for
    one row (a key column of either type), which one upsert statement cannot write twice
    (PostgreSQL: "ON CONFLICT DO UPDATE command cannot affect row a second time"); so
    such a batch is reduced by the keys' text, the last event winning."""
    classes = {k.__class__ for k in last}
    return len(classes) > 1 and str in classes


def cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


class SqliteSink(TableSink):
    """SQLite (stdlib ``sqlite3``), WAL mode with synchronous=FULL: a commit is on disk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        path = self.config.get("path")
        if not path:
            raise ConnectorConfigError(f"connectors.{self.name}.config.path: the SQLite "
                                       "database file is required")
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {self.offsets_table} (connector TEXT, "
                        "topic TEXT, partition INTEGER, next_offset INTEGER NOT NULL, "
                        "PRIMARY KEY (connector, topic, partition))")
        if self.document:
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {self.table} "
                            "(key TEXT PRIMARY KEY, value TEXT)")
        cols = ", ".join(self.columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in self.columns if c != self.key_column)
        self.upsert = (f"INSERT INTO {self.table} ({cols}) VALUES "
                       f"({', '.join('?' for _ in self.columns)}) ON CONFLICT ({self.key_column}) "
                       + (f"DO UPDATE SET {updates}" if updates else "DO NOTHING"))
        self.delete = f"DELETE FROM {self.table} WHERE {self.key_column} = ?"

    def stored_offsets(self, topics: list[str]) -> dict[tuple[str, int], int]:
        rows = self.db.execute(f"SELECT topic, partition, next_offset FROM {self.offsets_table} "
                               "WHERE connector = ?", (self.name,)).fetchall()
        return {(t, int(part)): int(o) for t, part, o in rows if t in topics}

    def put(self, events: list[Event], next_offsets: dict[tuple[str, int], int]) -> None:
        self.db.execute("BEGIN IMMEDIATE")  # the write lock: one task's batch at a time
        try:
            stored = self.stored_offsets(list({e.topic for e in events}))
            self.apply(list(self.last_events(events, stored).items()))
            self.db.executemany(
                f"INSERT INTO {self.offsets_table} VALUES (?, ?, ?, ?) ON CONFLICT "
                "(connector, topic, partition) DO UPDATE SET next_offset = "
                "max(next_offset, excluded.next_offset)",
                [(self.name, t, part, o) for (t, part), o in next_offsets.items()])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def apply(self, changes: list[tuple[Any, Event]]) -> None:
        """Apply ``changes`` in a savepoint; if the database refuses them, apply each half
        on its own, down to the single events it refuses."""
        self.db.execute("SAVEPOINT rail_batch")
        try:
            self.db.executemany(self.upsert, self.rows([(k, e.value) for k, e in changes]))
            self.db.executemany(self.delete, [(k,) for k, e in changes if e.value is None])
            self.db.execute("RELEASE rail_batch")
        except sqlite3.IntegrityError as exc:
            self.db.execute("ROLLBACK TO rail_batch")
            self.db.execute("RELEASE rail_batch")
            if len(changes) == 1:
                self.refused(changes[0][1], exc)
                return
            half = len(changes) // 2
            self.apply(changes[:half])
            self.apply(changes[half:])

    def close(self) -> None:
        self.db.close()
