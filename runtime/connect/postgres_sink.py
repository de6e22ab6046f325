"""The PostgreSQL sink (psycopg 3): see ``sql_sink`` for the table and the guarantee.

    config = {dsn = "host=127.0.0.1 port=5432 dbname=shop user=rail", table = "orders",
              key_column = "id", columns = ["id", "name", "qty"]}

A batch goes in as one statement: its last change per key as a JSON array, turned into
rows by ``jsonb_populate_record`` (the columns' own types), upserted with ``ON CONFLICT DO
UPDATE`` and deleted for tombstones, so the rows are built by PostgreSQL, not per row in
Python.  The offsets rows are locked, read and updated in the same transaction.
"""

from __future__ import annotations

from typing import Any

import msgspec

from runtime.client import Event
from runtime.connect.errors import ConnectError, ConnectorConfigError
from runtime.connect.sql_sink import TableSink

_encode = msgspec.json.Encoder().encode


class PostgresSink(TableSink):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import psycopg

        dsn = self.config.get("dsn")
        if not dsn:
            raise ConnectorConfigError(f"connectors.{self.name}.config.dsn: the PostgreSQL "
                                       "connection string is required")
        try:
            self.db = psycopg.connect(str(dsn), autocommit=True)
        except psycopg.OperationalError as exc:
            raise ConnectError(f"sink {self.name}: cannot connect to PostgreSQL: "
                               f"{str(exc).strip()}") from None
        with self.db.transaction():
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {self.offsets_table} (connector TEXT, "
                            "topic TEXT, partition INTEGER, next_offset BIGINT NOT NULL, "
                            "PRIMARY KEY (connector, topic, partition))")
            if self.document:
                self.db.execute(f"CREATE TABLE IF NOT EXISTS {self.table} "
                                "(key TEXT PRIMARY KEY, value JSONB)")
        self.apply_sql = self._statement()

    def _statement(self) -> str:
        """One statement applies a batch: ``%s`` is a JSON array of ``[key, value]`` (the
        last change of each key; a null value deletes)."""
        t, k = self.table, self.key_column
        batch = ("WITH batch AS (SELECT e->>0 AS k, e->1 AS v FROM "
                 "jsonb_array_elements(%s::jsonb) e), ")
        if self.document:
            return (batch + f"up AS (INSERT INTO {t} (key, value) SELECT k, v FROM batch "
                    "WHERE jsonb_typeof(v) <> 'null' ON CONFLICT (key) DO UPDATE SET "
                    f"value = EXCLUDED.value) DELETE FROM {t} USING batch "
                    f"WHERE jsonb_typeof(batch.v) = 'null' AND {t}.key = batch.k")
        cols = ", ".join(self.columns)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns if c != k)
        row = f"jsonb_populate_record(NULL::{t}, batch.v || jsonb_build_object('{k}', batch.k))"
        key = f"(jsonb_populate_record(NULL::{t}, jsonb_build_object('{k}', batch.k))).{k}"
        return (batch + f"up AS (INSERT INTO {t} ({cols}) SELECT "
                + ", ".join(f"r.{c}" for c in self.columns)
                + f" FROM batch, {row} r WHERE jsonb_typeof(batch.v) = 'object' "
                f"ON CONFLICT ({k}) "
                + (f"DO UPDATE SET {updates}" if updates else "DO NOTHING")
                + f") DELETE FROM {t} USING batch WHERE jsonb_typeof(batch.v) = 'null' "
                f"AND {t}.{k} = {key}")

    def stored_offsets(self, topics: list[str]) -> dict[tuple[str, int], int]:
        with self.db.transaction():
            rows = self.db.execute(f"SELECT topic, partition, next_offset FROM "
                                   f"{self.offsets_table} WHERE connector = %s",
                                   (self.name,)).fetchall()
        return {(t, int(part)): int(o) for t, part, o in rows if t in topics}

    def put(self, events: list[Event], next_offsets: dict[tuple[str, int], int]) -> None:
        with self.db.transaction(), self.db.cursor() as cur:
            last = self.last_events(events, self.locked_offsets(cur, next_offsets))
            if last:
                self.apply(cur, list(last.items()))
            cur.executemany(
                f"INSERT INTO {self.offsets_table} VALUES (%s, %s, %s, %s) ON CONFLICT "
                "(connector, topic, partition) DO UPDATE SET next_offset = "
                f"GREATEST({self.offsets_table}.next_offset, EXCLUDED.next_offset)",
                [(self.name, t, part, o) for (t, part), o in next_offsets.items()])

    def apply(self, cur: Any, changes: list[tuple[Any, Event]]) -> None:
        """Apply ``changes`` in a savepoint; if PostgreSQL refuses them (a value its column
        type rejects, a constraint), apply each half on its own, down to the single events
        it refuses."""
        import psycopg

        rows = _encode([[str(k), e.value] for k, e in changes]).decode()
        try:
            with self.db.transaction():
                cur.execute(self.apply_sql, (rows,))
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            if len(changes) == 1:
                self.refused(changes[0][1], exc)
                return
            half = len(changes) // 2
            self.apply(cur, changes[:half])
            self.apply(cur, changes[half:])

    def locked_offsets(self, cur: Any, batch: dict[tuple[str, int], int]
                       ) -> dict[tuple[str, int], int]:
        """The stored offsets of the batch's partitions, their rows locked until the commit:
        a task still applying a batch of one of them (it owned the partition before a
        rebalance) is waited for, and what it applied is skipped."""
        cur.execute(f"SELECT topic, partition, next_offset FROM {self.offsets_table} "
                    "WHERE connector = %s AND topic = ANY(%s) ORDER BY topic, partition "
                    "FOR UPDATE", (self.name, sorted({t for t, _ in batch})))
        return {(t, int(part)): int(o) for t, part, o in cur.fetchall()}

    def close(self) -> None:
        self.db.close()
