"""The sparse offset-and-time index of one segment.

One entry every ``interval`` bytes of log, 16 bytes each, big-endian:

    offset size  field
    ------ ----  ----------------------------------------------------------
       0     4   relative_offset   batch base offset - segment base offset
       4     4   position          byte position of that batch in the .log
       8     8   max_ts_before     largest timestamp of every batch before it

``max_ts_before`` never decreases, so a timestamp lookup can bisect it like an offset
lookup.  The index of the active segment lives in memory and is rebuilt by recovery; a
closed segment's index is written once, when the segment rolls.  Not thread-safe: owned by
its segment.
"""

from __future__ import annotations

import bisect
import os
import struct
from array import array
from pathlib import Path

ENTRY = struct.Struct(">IIq")
NO_TIMESTAMP = -(2**63)


class OffsetIndex:
    def __init__(self, base_offset: int, interval: int) -> None:
        self.base_offset = base_offset
        self.interval = interval
        self.offsets: array[int] = array("q")
        self.positions: array[int] = array("q")
        self.max_ts_before: array[int] = array("q")
        self._bytes_since_entry = 0

    def __len__(self) -> int:
        return len(self.offsets)

    def clear(self) -> None:
        del self.offsets[:], self.positions[:], self.max_ts_before[:]
        self._bytes_since_entry = 0

    def maybe_add(self, offset: int, position: int, size: int, max_ts_before: int) -> None:
        """Record the batch at ``position`` if the last entry is ``interval`` bytes back."""
        if not self.offsets or self._bytes_since_entry >= self.interval:
            self.offsets.append(offset)
            self.positions.append(position)
            self.max_ts_before.append(max_ts_before)
            self._bytes_since_entry = 0
        self._bytes_since_entry += size

    def lookup(self, offset: int) -> tuple[int, int]:
        """Return (offset, position) of the last entry at or before ``offset``."""
        i = bisect.bisect_right(self.offsets, offset) - 1
        if i < 0:
            return self.base_offset, 0
        return self.offsets[i], self.positions[i]

    def lookup_time(self, timestamp: int) -> tuple[int, int]:
        """(offset, position) to scan from for the first record with timestamp >= ``timestamp``."""
        i = bisect.bisect_left(self.max_ts_before, timestamp) - 1
        if i < 0:
            return self.base_offset, 0
        return self.offsets[i], self.positions[i]

    def truncate_after(self, position: int) -> None:
        """Drop entries at or past ``position`` (the log was cut there)."""
        i = bisect.bisect_left(self.positions, position)
        del self.offsets[i:], self.positions[i:], self.max_ts_before[i:]

    def to_bytes(self) -> bytes:
        return b"".join(
            ENTRY.pack(o - self.base_offset, p, t)
            for o, p, t in zip(self.offsets, self.positions, self.max_ts_before)
        )

    def write(self, path: Path) -> None:
        """Write the whole index to ``path`` and fsync it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, self.to_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self, path: Path, log_size: int) -> bool:
        """Load entries from ``path``; False (and empty) when missing or inconsistent."""
        self.clear()
        try:
            data = path.read_bytes()
        except OSError:
            return False
        if len(data) % ENTRY.size:
            return False
        last_pos, last_ts = -1, NO_TIMESTAMP
        for rel, pos, ts in ENTRY.iter_unpack(data):
            if pos <= last_pos or pos >= log_size or ts < last_ts:
                self.clear()
                return False
            self.offsets.append(self.base_offset + rel)
            self.positions.append(pos)
            self.max_ts_before.append(ts)
            last_pos, last_ts = pos, ts
        return True
