"""One segment of a partition log: ``<base>.log`` plus its sparse ``<base>.index``.

Files are named by the 20-digit base offset so that ``ls`` sorts them.  A segment is
owned by its partition and used from one thread (the broker loop); the flusher thread only
fsyncs a duplicate of its file descriptor (``dup_fd``).
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from brokerd.errors import CorruptLogError, StorageError
from brokerd.log.batch import (
    ATTR_COMPACTED,
    HEADER_SIZE,
    BatchHeader,
    crc_ok,
    decode_header,
    header_problem,
)
from brokerd.log.files import write_all
from brokerd.log.index import NO_TIMESTAMP, OffsetIndex


# The in-memory tail of the active segment, for consumers at the end of the log: at most
# this many batches and bytes, of batches up to TAIL_MAX_BATCH bytes (a bigger one empties
# it).  It holds at most TAIL_BYTES per partition that is being written to, and all tails
# together at most TAILS_TOTAL_BYTES: past that, the tails written to least recently go.
TAIL_BATCHES = 64
TAIL_BYTES = 128 * 1024
TAIL_MAX_BATCH = 32 * 1024
TAILS_TOTAL_BYTES = 32 * 1024 * 1024
TAIL_OVERHEAD = 512  # what a kept batch costs besides its bytes (header tuple, views, allocator)
# Byte positions of recent read and append ends a segment remembers (a few per consumer).
STARTS_KEPT = 64


class TailBudget:
    """The bytes every segment's in-memory tail holds, bounded for the whole process.

    With thousands of partitions, 128 KiB of tail each would be hundreds of MB; the
    segments appended to least recently give theirs up first (a read of theirs then goes
    to the file, as it would without the tail).  Owned by the broker loop, like segments.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._holders: OrderedDict[Segment, None] = OrderedDict()

    def grew(self, segment: Segment, size: int) -> None:
        self.used += size
        holders = self._holders
        holders[segment] = None
        holders.move_to_end(segment)
        while self.used > self.limit and len(holders) > 1:
            oldest = next(iter(holders))
            oldest.drop_tail()

    def shrank(self, segment: Segment, size: int, emptied: bool) -> None:
        self.used -= size
        if emptied:
            self._holders.pop(segment, None)


TAILS = TailBudget(TAILS_TOTAL_BYTES)


def segment_name(base_offset: int, suffix: str) -> str:
    return f"{base_offset:020d}{suffix}"


class StoredBatch(NamedTuple):
    """A batch as read back: its header and its payload bytes (msgpack records)."""

    header: BatchHeader
    payload: memoryview


@dataclass
class ScanResult:
    """What a scan of a segment file found: intact batches end at ``valid_end``."""

    valid_end: int
    next_offset: int
    max_timestamp: int
    batches: int = 0
    problem: str | None = None
    headers: list[tuple[int, BatchHeader]] = field(default_factory=list)


class Segment:
    def __init__(self, directory: Path, base_offset: int, index_interval: int,
                 max_batch_bytes: int) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.log_path = directory / segment_name(base_offset, ".log")
        self.index_path = directory / segment_name(base_offset, ".index")
        self.max_batch_bytes = max_batch_bytes
        self.index = OffsetIndex(base_offset, index_interval)
        self.fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.next_offset = base_offset
        self.max_timestamp = NO_TIMESTAMP
        self.first_append_ms: int | None = None
        self.corrupt_at: int | None = None
        self.corrupt_why = ""
        self.dirty = False
        # Where recent reads ended and the last append ended (offset -> byte position), so a
        # consumer at the tail starts there instead of walking from the last index entry.
        self._starts: dict[int, int] = {}
        # The last batches appended, kept in memory: a consumer at the tail (the common
        # case, and the one that is latency-bound) is served without a pread.
        self._tail: deque[StoredBatch] = deque()
        self._tail_bytes = 0

    # -- scanning -------------------------------------------------------------------
    def scan(self, start: int, next_offset: int, max_ts: int, dense: bool,
             keep_headers: bool = False) -> ScanResult:
        """Walk batches from byte ``start``, checking length, CRC and offsets.

        Stops at the first batch that is torn or corrupt and says why in ``problem``.
        """
        result = ScanResult(start, next_offset, max_ts)
        if self.size <= start:
            return result
        with mmap.mmap(self.fd, self.size, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                self._scan_into(buf, result, dense, keep_headers)
            finally:
                buf.release()
        return result

    def _scan_into(self, buf: memoryview, result: ScanResult, dense: bool,
                   keep_headers: bool) -> None:
        pos = result.valid_end
        while pos < self.size:
            problem = self._check_at(buf, pos, result.next_offset, dense)
            if problem:
                result.problem = problem
                return
            header = decode_header(buf, pos)
            if keep_headers:
                result.headers.append((pos, header))
            pos += header.size
            result.valid_end = pos
            result.next_offset = header.next_offset
            result.max_timestamp = max(result.max_timestamp, header.max_timestamp)
            result.batches += 1

    def _check_at(self, buf: Any, pos: int, expected: int, dense: bool) -> str | None:
        if pos + HEADER_SIZE > self.size:
            return "torn header"
        header = decode_header(buf, pos)
        problem = header_problem(header, self.max_batch_bytes)
        if problem:
            return problem
        if pos + header.size > self.size:
            return "torn payload"
        if not crc_ok(buf, pos, header):
            return "CRC mismatch"
        gap_ok = not dense or header.attributes & ATTR_COMPACTED
        if header.base_offset != expected and not (gap_ok and header.base_offset > expected):
            return f"base offset {header.base_offset}, expected {expected}"
        return None

    def rebuild_index(self, headers: list[tuple[int, BatchHeader]]) -> None:
        self.index.clear()
        max_ts = NO_TIMESTAMP
        for pos, header in headers:
            self.index.maybe_add(header.base_offset, pos, header.size, max_ts)
            max_ts = max(max_ts, header.max_timestamp)

    # -- appending ------------------------------------------------------------------
    def append(self, header: BatchHeader, header_bytes: bytes,
               payload: bytes | memoryview) -> None:
        """Write one batch at the end of the file; on failure the file is cut back."""
        pos = self.size
        try:
            write_all(self.fd, header_bytes, payload)
        except OSError as exc:
            self._cut_back(pos)
            raise StorageError(f"cannot append to {self.log_path}: {exc.strerror}") from exc
        size = header.size
        self.index.maybe_add(header.base_offset, pos, size, self.max_timestamp)
        self._keep_tail(header, payload, size)
        self.size = pos + size
        self.next_offset = header.next_offset
        self._remember(self.next_offset, self.size)
        if header.max_timestamp > self.max_timestamp:
            self.max_timestamp = header.max_timestamp
        if self.first_append_ms is None:
            self.first_append_ms = header.append_timestamp
        self.dirty = True

    def _keep_tail(self, header: BatchHeader, payload: bytes | memoryview, size: int) -> None:
        if size > TAIL_MAX_BATCH:
            self.drop_tail()  # the tail must end at the end of the log
            return
        tail = self._tail
        # A copy: a view would keep the whole request's ZeroMQ frame alive with it.
        tail.append(StoredBatch(header, memoryview(bytes(payload))))
        cost = size + TAIL_OVERHEAD
        self._tail_bytes += cost
        freed = 0
        while len(tail) > TAIL_BATCHES or self._tail_bytes > TAIL_BYTES:
            gone = tail.popleft().header.size + TAIL_OVERHEAD
            self._tail_bytes -= gone
            freed += gone
        TAILS.grew(self, cost - freed)

    def drop_tail(self) -> None:
        """Forget the in-memory tail (the segment was rolled, cut or replaced, or the
        process-wide budget of tails needs the room)."""
        if self._tail:
            TAILS.shrank(self, self._tail_bytes, emptied=True)
        self._tail.clear()
        self._tail_bytes = 0

    def _read_tail(self, offset: int, max_bytes: int) -> list[StoredBatch] | None:
        """The batches from ``offset`` on if the tail holds them all, else None."""
        tail = self._tail
        if not tail or offset < tail[0].header.base_offset or self.corrupt_at is not None:
            return None
        out: list[StoredBatch] = []
        used = 0
        for batch in reversed(tail):  # a consumer at the tail wants the last few
            if batch.header.next_offset <= offset:
                break
            out.append(batch)
        out.reverse()
        for i, batch in enumerate(out):
            used += batch.header.size
            if used >= max_bytes:
                return out[:i + 1]
        return out

    def _cut_back(self, pos: int) -> None:
        try:
            os.ftruncate(self.fd, pos)
        except OSError as exc:  # the tail now holds a torn batch that recovery will drop
            raise StorageError(f"cannot cut {self.log_path} back to {pos}: {exc}") from exc

    def truncate(self, pos: int) -> None:
        """Cut the file at ``pos`` (recovery of a torn tail)."""
        os.ftruncate(self.fd, pos)
        self.size = pos
        self.index.truncate_after(pos)
        self._starts.clear()
        self.drop_tail()
        self.dirty = True

    # -- reading --------------------------------------------------------------------
    def read(self, offset: int, max_bytes: int, verify: bool) -> list[StoredBatch]:
        """Whole batches holding ``offset`` and later, about ``max_bytes`` of them.

        The first batch is returned even when it alone is larger than ``max_bytes``.
        """
        if offset >= self.next_offset:
            return []
        cached = self._read_tail(offset, max_bytes)
        if cached is not None:
            return cached
        pos = self._starts.get(offset)
        if pos is None:
            _, pos = self.index.lookup(offset)
        end = self.size if self.corrupt_at is None else self.corrupt_at
        slack = self.index.interval + HEADER_SIZE  # the index entry may lie this far back
        out: list[StoredBatch] = []
        used = 0
        while pos < end and used < max_bytes:
            # Read only what the budget still allows: a second full-size pread would copy
            # max_bytes again to add one batch, then discard the rest.
            want = max_bytes - used + slack
            chunk = memoryview(os.pread(self.fd, min(want, end - pos), pos))
            consumed, used, cut = self._walk(chunk, pos, offset, max_bytes, used, out, verify)
            if consumed == 0:
                if out:
                    break
                size = self._batch_size_at(pos)
                if pos + size > end:  # a damaged length; re-reading would loop for ever
                    raise CorruptLogError(str(self.log_path), pos, "batch runs past the end")
                chunk = memoryview(os.pread(self.fd, size, pos))
                consumed, used, cut = self._walk(chunk, pos, offset, max_bytes + len(chunk),
                                                 used, out, verify)
            pos += consumed
            if out and cut > max_bytes - used + slack:
                break  # the next read would be too short for the cut batch: skip making it
        if out:
            self._remember(out[-1].header.next_offset, pos)
        if self.corrupt_at is not None and pos >= self.corrupt_at and used < max_bytes:
            raise CorruptLogError(str(self.log_path), self.corrupt_at, self.corrupt_why)
        return out

    def _remember(self, offset: int, pos: int) -> None:
        if len(self._starts) >= STARTS_KEPT:
            self._starts.clear()
        self._starts[offset] = pos

    def _walk(self, chunk: memoryview, file_pos: int, offset: int, max_bytes: int,
              used: int, out: list[StoredBatch], verify: bool) -> tuple[int, int, int]:
        """Collect the whole batches of ``chunk``; return (bytes walked, budget used, size of
        a batch the chunk cut short that the read would return, or 0)."""
        p = 0
        while p + HEADER_SIZE <= len(chunk) and used < max_bytes:
            header = decode_header(chunk, p)
            problem = header_problem(header, self.max_batch_bytes)
            if problem:
                raise CorruptLogError(str(self.log_path), file_pos + p, problem)
            if p + header.size > len(chunk):
                return p, used, header.size if header.next_offset > offset else 0
            if verify and not crc_ok(chunk, p, header):
                raise CorruptLogError(str(self.log_path), file_pos + p, "CRC mismatch")
            if header.next_offset > offset:
                out.append(StoredBatch(header, chunk[p + HEADER_SIZE:p + header.size]))
                used += header.size
            p += header.size
        return p, used, 0

    def _batch_size_at(self, pos: int) -> int:
        raw = os.pread(self.fd, HEADER_SIZE, pos)
        if len(raw) < HEADER_SIZE:
            raise CorruptLogError(str(self.log_path), pos, "torn header")
        header = decode_header(raw)
        problem = header_problem(header, self.max_batch_bytes)
        if problem:
            raise CorruptLogError(str(self.log_path), pos, problem)
        return header.size

    # -- durability and lifecycle ---------------------------------------------------
    def dup_fd(self) -> int:
        """A duplicate descriptor the flusher may fsync while the loop keeps appending."""
        return os.dup(self.fd)

    def write_index(self) -> None:
        self.index.write(self.index_path)

    def close(self) -> None:
        self.drop_tail()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def delete(self) -> None:
        self.close()
        for path in (self.log_path, self.index_path):
            path.unlink(missing_ok=True)

    def reopen(self) -> None:
        """Reopen the file after the cleaner replaced it."""
        self.close()  # drops the in-memory tail too
        self.fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND)
        self.size = os.fstat(self.fd).st_size
        self._starts.clear()
