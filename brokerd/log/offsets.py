"""Durable committed offsets of consumer groups: ``<data>/offsets.log``.

An append-only file of commit entries, last one wins per (group, topic, partition).  One
``commit`` call is one ``write`` however many offsets it carries, so it survives kill -9 as
soon as it returns; ``flush`` adds an fsync for power loss.  On open the file is read, a
torn tail dropped, and the live entries rewritten compactly (temp, fsync, rename).

Entry layout (big-endian):

    offset size  field
    ------ ----  -------------------------------------------------
       0     4   length of the body
       4     4   CRC-32 (zlib) of the body
       8     n   body: msgpack [group, topic, partition, offset]

Not thread-safe: the broker loop owns it; ``begin_flush`` hands an fd to the flusher.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import msgspec

from brokerd.errors import StorageError
from brokerd.log.files import replace_atomically, write_all

log = logging.getLogger("brokerd.offsets")

ENTRY_HEAD = struct.Struct(">II")
Key = tuple[str, str, int]
_encoder = msgspec.msgpack.Encoder()
_body = msgspec.msgpack.Decoder(tuple[str, str, int, int])
COMPACT_FACTOR = 4
COMPACT_MIN_BYTES = 4 * 1024 * 1024


def encode_entry(group: str, topic: str, partition: int, offset: int) -> bytes:
    body = _encoder.encode((group, topic, partition, offset))
    return ENTRY_HEAD.pack(len(body), zlib.crc32(body)) + body


class OffsetStore:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "offsets.log"
        self.offsets: dict[Key, int] = {}
        # The same offsets by group: describe_group of every group (a /metrics scrape)
        # must not scan every group's offsets for each one.
        self._by_group: dict[str, dict[tuple[str, int], int]] = {}
        self.dropped_bytes = 0
        self._load()
        self._rewrite()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        self._dirty = False

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        pos = 0
        while pos + ENTRY_HEAD.size <= len(data):
            length, crc = ENTRY_HEAD.unpack_from(data, pos)
            body = data[pos + ENTRY_HEAD.size:pos + ENTRY_HEAD.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                break
            try:
                group, topic, partition, offset = _body.decode(body)
            except msgspec.DecodeError:
                break
            self._set(group, topic, partition, offset)
            pos += ENTRY_HEAD.size + length
        self.dropped_bytes = len(data) - pos
        if self.dropped_bytes:
            log.warning("%s: dropped a torn tail of %d bytes", self.path, self.dropped_bytes)

    def _rewrite(self) -> None:
        """Replace the file by one entry per live key."""
        data = b"".join(encode_entry(g, t, p, o) for (g, t, p), o in self.offsets.items())
        replace_atomically(self.path, data)

    def commit(self, group: str, items: list[tuple[str, int, int]]) -> None:
        """Store (topic, partition, offset) for ``group``, all in one write."""
        data = b"".join(encode_entry(group, t, p, o) for t, p, o in items)
        try:
            write_all(self._fd, data)
        except OSError as exc:
            os.ftruncate(self._fd, self._size)
            raise StorageError(f"cannot write {self.path}: {exc.strerror}") from exc
        self._size += len(data)
        self._dirty = True
        for topic, partition, offset in items:
            self._set(group, topic, partition, offset)
        if self._size > max(COMPACT_MIN_BYTES, COMPACT_FACTOR * len(self.offsets) * 64):
            self.compact()

    def get(self, group: str, topic: str, partition: int) -> int | None:
        return self.offsets.get((group, topic, partition))

    def _set(self, group: str, topic: str, partition: int, offset: int) -> None:
        self.offsets[(group, topic, partition)] = offset
        self._by_group.setdefault(group, {})[(topic, partition)] = offset

    def for_group(self, group: str) -> dict[tuple[str, int], int]:
        return dict(self._by_group.get(group, ()))

    def groups(self) -> set[str]:
        return set(self._by_group)

    def forget(self, group: str | None = None, topic: str | None = None) -> None:
        """Drop the offsets of a deleted group or topic (durable at the next compaction)."""
        for key in [k for k in self.offsets if (group is None or k[0] == group)
                    and (topic is None or k[1] == topic)]:
            del self.offsets[key]
            mine = self._by_group[key[0]]
            del mine[(key[1], key[2])]
            if not mine:
                del self._by_group[key[0]]
        self.compact()

    def compact(self) -> None:
        os.close(self._fd)
        self._rewrite()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        self._dirty = False

    @property
    def needs_flush(self) -> bool:
        return self._dirty

    def begin_flush(self) -> int:
        """A duplicate descriptor for the flusher thread to fsync and close."""
        self._dirty = False
        return os.dup(self._fd)

    def flush(self) -> None:
        os.fsync(self._fd)
        self._dirty = False

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1
