"""The SQL table poller: new rows of a table as records (SQLite or PostgreSQL).

    config = {dsn = "host=... dbname=shop", table = "orders", mode = "incrementing",
              column = "id"}
    config = {path = "shop.db", table = "orders", mode = "timestamp",
              column = "updated_at", id_column = "id", delay_ms = 2000}

``incrementing``: rows whose ``column`` is above the last one sent, in its order; the
offset is that value.  On PostgreSQL each poll first takes ``LOCK TABLE ... IN SHARE MODE``
in its read transaction: it waits for the transactions writing the table to end and holds
new writes back while it reads (a few ms), so a row with a smaller id committed after a
larger one (sequence values are taken in one order, committed in another) is never passed
over.  SQLite has one writer at a time, so ids commit in order.

``timestamp``: rows whose ``(column, id_column)`` is above the last pair sent, in that order,
and (PostgreSQL) older than ``delay_ms``, for the transactions still open; a row updated
again gets a newer timestamp and is sent again.  A transaction open longer than
``delay_ms`` can commit a row behind the poller (as in Kafka's JDBC connector): prefer
``incrementing`` for inserts.

Each row is a map of column to value (dates as ISO 8601 text, decimals as text); its key is
``key_column`` (default: ``id_column``, else ``column``).  One table per connector: ``tasks``
must be 1.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from typing import Any

from runtime.connect.api import Source
from runtime.connect.errors import ConnectError, ConnectorConfigError
from runtime.connect.records import SourceRecord
from runtime.connect.sql_sink import sql_name


class TableSource(Source):
    def open(self, offsets: dict[str, Any]) -> None:
        where = f"connectors.{self.name}.config"
        if self.tasks != 1:
            raise ConnectorConfigError(f"connectors.{self.name}.tasks: a table poller reads "
                                       "one table: set tasks = 1")
        if "table" not in self.config:
            raise ConnectorConfigError(f"{where}.table: the table to read is required")
        self.table = sql_name(str(self.config["table"]), f"{where}.table")
        self.mode = str(self.config.get("mode", "incrementing"))
        if self.mode not in ("incrementing", "timestamp"):
            raise ConnectorConfigError(f"{where}.mode: incrementing or timestamp, not "
                                       f"{self.mode!r}")
        self.column = sql_name(str(self.config.get("column", "id")), f"{where}.column")
        self.id_column = sql_name(str(self.config.get("id_column", "id")), f"{where}.id_column")
        self.key_column = str(self.config.get(
            "key_column", self.id_column if self.mode == "timestamp" else self.column))
        self.limit = int(self.config.get("batch", 1000))
        self.delay_s = float(self.config.get("delay_ms", 2000)) / 1000
        self.postgres = "dsn" in self.config
        self.db = self._connect(where)
        self.last = offsets.get(self.table)

    def _connect(self, where: str) -> Any:
        if self.postgres:
            import psycopg

            try:
                return psycopg.connect(str(self.config["dsn"]), autocommit=True)
            except psycopg.OperationalError as exc:
                raise ConnectError(f"source {self.name}: cannot connect to PostgreSQL: "
                                   f"{str(exc).strip()}") from None
        if "path" not in self.config:
            raise ConnectorConfigError(f"{where}: dsn (PostgreSQL) or path (SQLite) is required")
        import sqlite3

        return sqlite3.connect(str(self.config["path"]), isolation_level=None)

    def records(self) -> Iterator[SourceRecord | None]:
        while True:
            rows = self._poll()
            if not rows:
                yield None
                continue
            for row in rows:
                value = {k: plain(v) for k, v in row.items()}
                if self.mode == "incrementing":
                    self.last = value[self.column]
                else:
                    self.last = [value[self.column], value[self.id_column]]
                yield SourceRecord(value, key=str(value.get(self.key_column)),
                                   source_partition=self.table, source_offset=self.last)

    def _poll(self) -> list[dict[str, Any]]:
        sql, params = self._query()
        if not self.postgres:
            cur = self.db.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        with self.db.transaction(), self.db.cursor() as cur:
            if self.mode == "incrementing":
                cur.execute(f"LOCK TABLE {self.table} IN SHARE MODE")
            cur.execute(sql, params)
            names = [d.name for d in cur.description or []]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def _query(self) -> tuple[str, list[Any]]:
        mark = "%s" if self.postgres else "?"
        col, ident = self.column, self.id_column
        conds, params = [], []
        if self.mode == "incrementing":
            if self.last is not None:
                conds.append(f"{col} > {mark}")
                params.append(self.last)
            order = col
        else:
            if self.last is not None:
                conds.append(f"({col} > {mark} OR ({col} = {mark} AND {ident} > {mark}))")
                params += [self.last[0], self.last[0], self.last[1]]
            if self.postgres:
                conds.append(f"{col} < now() - make_interval(secs => {mark})")
                params.append(self.delay_s)
            order = f"{col}, {ident}"
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return f"SELECT * FROM {self.table}{where} ORDER BY {order} LIMIT {self.limit}", params

    def close(self) -> None:
        self.db.close()


def plain(value: Any) -> Any:
    """A column value as the log stores it: dates as ISO 8601 text, decimals and UUIDs as
    text; everything msgpack knows as it is."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    return value
