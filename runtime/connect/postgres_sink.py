"""The PostgreSQL sink (psycopg 3): see ``sql_sink`` for the table and the guarantee.

    config = {dsn = "host=127.0.0.1 port=5432 dbname=shop user=rail", table = "orders",
              key_column = "id", columns = ["id", "name", "qty"]}

A batch (its last change per key) goes in with ``COPY`` into a temporary table of the
target's columns, then one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` and one
``DELETE ... USING`` for tombstones: a few statements a batch, not one per row.  (Handing
PostgreSQL the batch as JSON for ``jsonb_populate_record`` instead was measured ~10% slower
end to end of the sink.)  The offsets rows are locked, read and updated in the same
transaction.
"""

from __future__ import annotations

from typing import Any

from runtime.client import Event
from runtime.connect.errors import ConnectError, ConnectorConfigError
from runtime.connect.sql_sink import TableSink
from runtime.consumer import Batch, events_of_batches


class PostgresSink(TableSink):
    pipelined = True  # psycopg waits for the server without the GIL: the next batch meanwhile
    takes_batches = True

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
            self.db.execute(f"CREATE TEMP TABLE rail_stage ON COMMIT DELETE ROWS AS "
                            f"SELECT {', '.join(self.columns)} FROM {self.table} WITH NO DATA")
            self.db.execute(f"CREATE TEMP TABLE rail_gone ON COMMIT DELETE ROWS AS "
                            f"SELECT {self.key_column} FROM {self.table} WITH NO DATA")
        self.rows_made: set[tuple[str, int]] = set()  # partitions with an offsets row
        cols = ", ".join(self.columns)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns if c != self.key_column)
        self.copy_rows = f"COPY rail_stage ({cols}) FROM STDIN"
        self.copy_keys = f"COPY rail_gone ({self.key_column}) FROM STDIN"
        self.upsert = (f"INSERT INTO {self.table} ({cols}) SELECT {cols} FROM rail_stage "
                       f"ON CONFLICT ({self.key_column}) "
                       + (f"DO UPDATE SET {updates}" if updates else "DO NOTHING"))
        self.delete = (f"DELETE FROM {self.table} t USING rail_gone g "
                       f"WHERE t.{self.key_column} = g.{self.key_column}")

    def stored_offsets(self, topics: list[str]) -> dict[tuple[str, int], int]:
        with self.db.transaction():
            rows = self.db.execute(f"SELECT topic, partition, next_offset FROM "
                                   f"{self.offsets_table} WHERE connector = %s",
                                   (self.name,)).fetchall()
        return {(t, int(part)): int(o) for t, part, o in rows if t in topics}

    def put(self, events: list[Event], next_offsets: dict[tuple[str, int], int]) -> None:
        self.ensure_rows(next_offsets)
        with self.db.transaction(), self.db.cursor() as cur:
            last = self.last_events(events, self.locked_offsets(cur, next_offsets))
            if last:
                self.apply(cur, list(last.items()))
            self.store_offsets(cur, next_offsets)

    def put_batches(self, batches: list[Batch], next_offsets: dict[tuple[str, int], int]
                    ) -> None:
        """``put`` without an event a record.  If PostgreSQL refuses the batch (a value
        its column type rejects, a constraint) nothing of it is applied, and ``put`` takes
        it again as events to find the rows it refuses."""
        import psycopg

        self.ensure_rows(next_offsets)
        try:
            with self.db.transaction(), self.db.cursor() as cur:
                last = self.last_values(batches, self.locked_offsets(cur, next_offsets))
                if last:
                    self.stage(cur, list(last.items()))
                self.store_offsets(cur, next_offsets)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
            self.put(events_of_batches(batches), next_offsets)

    def store_offsets(self, cur: Any, next_offsets: dict[tuple[str, int], int]) -> None:
        cur.executemany(
            f"INSERT INTO {self.offsets_table} VALUES (%s, %s, %s, %s) ON CONFLICT "
            "(connector, topic, partition) DO UPDATE SET next_offset = "
            f"GREATEST({self.offsets_table}.next_offset, EXCLUDED.next_offset)",
            [(self.name, t, part, o) for (t, part), o in next_offsets.items()])

    def apply(self, cur: Any, changes: list[tuple[Any, Event]], again: bool = False) -> None:
        """Apply ``changes`` in a savepoint; if PostgreSQL refuses them (a value its column
        type rejects, a constraint), apply each half on its own (``again``: the staging
        tables may hold an earlier half's rows), down to the single events it refuses."""
        import psycopg

        try:
            with self.db.transaction():
                if again:
                    cur.execute("TRUNCATE rail_stage, rail_gone")
                self.stage(cur, [(k, e.value) for k, e in changes])
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            if len(changes) == 1:
                self.refused(changes[0][1], exc)
                return
            half = len(changes) // 2
            self.apply(cur, changes[:half], again=True)
            self.apply(cur, changes[half:], again=True)

    def stage(self, cur: Any, changes: list[tuple[Any, Any]]) -> None:
        """Upsert and delete ``changes`` (key, value; None: delete) through the staging
        tables."""
        upserts = self.rows(changes)
        if upserts:
            with cur.copy(self.copy_rows) as copy:
                for row in upserts:
                    copy.write_row(row)
            cur.execute(self.upsert)
        gone = [k for k, v in changes if v is None]
        if gone:
            with cur.copy(self.copy_keys) as copy:
                for key in gone:
                    copy.write_row([key])
            cur.execute(self.delete)

    def ensure_rows(self, batch: dict[tuple[str, int], int]) -> None:
        """An offsets row for each partition of ``batch``, committed on its own before the
        first batch of it: ``locked_offsets`` can only wait for a task holding a row that
        exists (two tasks inserting a partition's first row would both apply its batch)."""
        new = [tp for tp in batch if tp not in self.rows_made]
        if not new:
            return
        with self.db.transaction():
            self.db.cursor().executemany(
                f"INSERT INTO {self.offsets_table} VALUES (%s, %s, %s, 0) "
                "ON CONFLICT (connector, topic, partition) DO NOTHING",
                [(self.name, t, part) for t, part in new])
        self.rows_made.update(new)

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
