"""The file source: tails a file of lines (JSONL by default), one record per line.

    config = {path = "orders.jsonl"}

The source partition is the path; the offset is ``[inode, byte position after the line]``,
so a restarted task reopens the same file where it stopped.  A line is sent once it ends
with a newline (a line being written is waited for).  Rotation (the path now names another
file): the old file is read to its end first, from the open handle, or, after a restart,
found again in the same folder by its inode; then the new file from its start.
Truncation (the file shrank below the position, as copytruncate does): read again from the
start.  Empty lines are skipped.  One file per connector: ``tasks`` must be 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from runtime.connect.api import Source
from runtime.connect.errors import ConnectorConfigError
from runtime.connect.records import SourceRecord

READ_BYTES = 1 << 20  # lines are read in blocks of this, split at once (not readline each)


class FileSource(Source):
    def open(self, offsets: dict[str, Any]) -> None:
        if "path" not in self.config:
            raise ConnectorConfigError(f"connectors.{self.name}.config.path: the file to read "
                                       "is required")
        if self.tasks != 1:
            raise ConnectorConfigError(f"connectors.{self.name}.tasks: a file source reads "
                                       "one file: set tasks = 1")
        self.path = Path(self.config["path"])
        self.partition = str(self.config["path"])
        self.fh: IO[bytes] | None = None
        self.ino, self.pos = 0, 0
        stored = offsets.get(self.partition)
        if stored:
            self._reopen(int(stored[0]), int(stored[1]))

    def _reopen(self, ino: int, pos: int) -> None:
        """Open the file with inode ``ino`` at ``pos``: the path itself, or a rotated
        sibling; if neither is there, the path from its start."""
        for candidate in [self.path, *self._siblings()]:
            try:
                if os.stat(candidate).st_ino == ino:
                    self._open(candidate, pos)
                    return
            except FileNotFoundError:
                continue

    def _siblings(self) -> list[Path]:
        folder = self.path.parent if str(self.path.parent) else Path(".")
        try:
            return [f for f in folder.iterdir() if f != self.path and f.is_file()]
        except FileNotFoundError:
            return []

    def _open(self, path: Path, pos: int) -> None:
        self.fh = open(path, "rb")  # noqa: SIM115 - held across records, closed in close()
        self.ino = os.fstat(self.fh.fileno()).st_ino
        if os.fstat(self.fh.fileno()).st_size < pos:
            pos = 0  # truncated while we were away
        self.fh.seek(pos)
        self.pos = pos

    def records(self) -> Iterator[SourceRecord | None]:
        size = READ_BYTES
        while True:
            if self.fh is None:
                try:
                    self._open(self.path, 0)
                except FileNotFoundError:
                    yield None
                    continue
            assert self.fh is not None
            block = self.fh.read(size)
            end = block.rfind(b"\n") + 1
            if not end and len(block) == size:  # a line longer than the block: a bigger one
                self.fh.seek(self.pos)
                size *= 2
                continue
            size = READ_BYTES
            if end:  # whole lines: a line still being written is read whole later
                pos, ino, partition = self.pos, self.ino, self.partition
                self.pos += end
                self.fh.seek(self.pos)
                for line in block[:end - 1].split(b"\n"):
                    pos += len(line) + 1
                    if line.strip():
                        yield SourceRecord(line.rstrip(b"\r"), source_partition=partition,
                                           source_offset=[ino, pos])
                continue
            self.fh.seek(self.pos)
            moved = self._moved()
            if moved == "rotated":
                yield from self._drain()
            if moved:
                self._switch(moved)
                continue
            yield None

    def _drain(self) -> Iterator[SourceRecord]:
        """The rest of a file that was rotated away: complete now, its last line too."""
        assert self.fh is not None
        for line in self.fh.read().splitlines(keepends=True):
            self.pos += len(line)
            if line.strip():
                yield SourceRecord(line.rstrip(b"\r\n"), source_partition=self.partition,
                                   source_offset=[self.ino, self.pos])

    def _moved(self) -> str:
        """"rotated" (the path names another file), "truncated" (shrank below our
        position) or "" (same file, nothing new)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return ""  # renamed away, the new one not created yet: keep the old
        if now.st_ino != self.ino:
            return "rotated"
        return "truncated" if now.st_size < self.pos else ""

    def _switch(self, moved: str) -> None:
        assert self.fh is not None
        if moved == "truncated":
            self.fh.seek(0)
            self.pos = 0
            return
        self.fh.close()
        self.fh = None
        try:
            self._open(self.path, 0)
        except FileNotFoundError:
            pass  # gone again: records() opens it once it is back

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
