"""A task's local SQLite file: state of every store, the checkpoint, the outbox.

One transaction holds a commit's store updates, its checkpoint (input offset, sequences) and
the batches it is about to send (the outbox): after a kill -9 the task finds all three or
none, and sends the outbox again under the same sequences.  WAL with synchronous=NORMAL:
a commit survives the process being killed; after a power loss the newest commits may be
gone, and the task then finds the changelog ahead of its file and restores from it.
Not thread-safe: one task owns it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from brokerd.protocol import fitted_name
from runtime.streams import checkpoint as ck
from runtime.streams.errors import StreamsError
from runtime.streams.sender import OutBatch

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (store TEXT, key BLOB, value BLOB, PRIMARY KEY (store, key))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS outbox (n INTEGER PRIMARY KEY, topic TEXT, partition INTEGER,
    producer_id INTEGER, sequence INTEGER, count INTEGER, records BLOB, probe INTEGER);
"""

# A file name holds 255 bytes, and SQLite adds "-journal" (8) to the database's name for its
# own files; its unix VFS refuses a path of more than 512 bytes, "-journal" included.
FILE_NAME_MAX = 255 - len("-journal")
PATH_MAX = 512 - len("-journal")
APP_FOLDER_CUT = 64  # characters an application's folder is cut to when its path is long


def local_file(state_dir: Path, app: str, topic: str, partition: int) -> Path:
    """``state_dir/<app>/<topic>-<partition>.sqlite``; where a long application or topic
    name would not fit a file name or SQLite's path limit, the folder is cut to 64
    characters and the file name to what is left, each with a hash of the whole name."""
    folder = state_dir.absolute() / app
    name = f"{topic}-{partition}.sqlite"
    if len(name) <= FILE_NAME_MAX and len(os.fsencode(folder / name)) <= PATH_MAX:
        return folder / name
    folder = state_dir.absolute() / fitted_name("", app, "", APP_FOLDER_CUT)
    room = min(FILE_NAME_MAX, PATH_MAX - len(os.fsencode(folder)) - 1)
    if room < 48:
        raise StreamsError(f"the state directory {state_dir.absolute()} is too long a path "
                           f"for SQLite's files (at most {PATH_MAX} bytes with the file's name)")
    return folder / fitted_name("", topic, f"-{partition}.sqlite", room)


class LocalStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    # -- reading ----------------------------------------------------------------------
    def checkpoint(self) -> ck.Checkpoint | None:
        return self._meta("checkpoint", ck.decode)

    def confirmed(self) -> tuple[int, str] | None:
        """(commit, incarnation) of the last changelog batch the broker acknowledged."""
        return self._meta("confirmed", lambda b: tuple(msgspec.msgpack.decode(b)))

    def _meta(self, name: str, decode: Callable[[bytes], Any]) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else decode(row[0])

    def outbox(self) -> list[OutBatch]:
        rows = self.db.execute("SELECT topic, partition, producer_id, sequence, count, records,"
                               " probe FROM outbox ORDER BY n").fetchall()
        return [OutBatch(t, part, pid, seq, n, bytes(rec), bool(probe))
                for t, part, pid, seq, n, rec, probe in rows]

    def get(self, store: str, key: bytes) -> bytes | None:
        row = self.db.execute("SELECT value FROM kv WHERE store = ? AND key = ?",
                              (store, key)).fetchone()
        return None if row is None else row[0]

    def items(self, store: str) -> Iterator[tuple[bytes, bytes]]:
        yield from self.db.execute("SELECT key, value FROM kv WHERE store = ?", (store,))

    # -- writing ----------------------------------------------------------------------
    def commit(self, checkpoint: ck.Checkpoint, updates: Iterable[tuple[str, bytes, bytes | None]],
               outbox: list[OutBatch]) -> None:
        """One transaction: the store updates (None deletes), the checkpoint, the new outbox
        (replacing the old one, which was sent)."""
        db = self.db
        db.execute("BEGIN")
        try:
            puts: list[tuple[str, bytes, bytes | None]] = []
            dels: list[tuple[str, bytes, bytes | None]] = []
            for store, key, value in updates:
                (dels if value is None else puts).append((store, key, value))
            db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", puts)
            db.executemany("DELETE FROM kv WHERE store = ? AND key = ?",
                           [(s, k) for s, k, _ in dels])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('checkpoint', ?)",
                       (ck.encode(checkpoint),))
            db.execute("DELETE FROM outbox")
            db.executemany("INSERT INTO outbox (topic, partition, producer_id, sequence, count,"
                           " records, probe) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(b.topic, b.partition, b.producer_id, b.sequence, b.count,
                             b.records, int(b.probe)) for b in outbox])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def confirm(self, commit: int, incarnation: str) -> None:
        """The changelog batch of ``commit`` is stored."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('confirmed', ?)",
                        (msgspec.msgpack.encode([commit, incarnation]),))

    def reset(self) -> None:
        """Forget everything (no local state to trust: restoring from nothing)."""
        self.db.executescript("BEGIN; DELETE FROM kv; DELETE FROM meta; DELETE FROM outbox;"
                              " COMMIT;")

    def replace_all(self, checkpoint: ck.Checkpoint,
                    updates: Iterable[tuple[str, bytes, bytes | None]]) -> None:
        """One transaction: forget everything, then hold the state ``updates`` leave (applied
        in order; the last value of a key wins, None deletes) and ``checkpoint``."""
        latest: dict[tuple[str, bytes], bytes | None] = {}
        for store, key, value in updates:
            latest[(store, key)] = value
        rows = sorted((s, k, v) for (s, k), v in latest.items() if v is not None)
        db = self.db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM kv")
            db.execute("DELETE FROM meta")
            db.execute("DELETE FROM outbox")
            db.executemany("INSERT INTO kv VALUES (?, ?, ?)", rows)  # sorted: appends
            db.execute("INSERT INTO meta VALUES ('checkpoint', ?)", (ck.encode(checkpoint),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()
