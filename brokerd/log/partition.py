"""A partition log: a directory of segments, appended at the end, read from any offset.

    <dir>/00000000000000000000.log       batches (see batch.py)
    <dir>/00000000000000000000.index     sparse index of a closed segment (see index.py)
    <dir>/00000000000000004096.snapshot  producer state as of that segment's start
    <dir>/start-offset                   the start offset moved by delete_records, if ever

Not thread-safe: the broker loop owns a partition.  The one exception is ``FlushTicket.run``,
which the flusher thread calls on descriptors duplicated for it by ``begin_flush``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from brokerd.errors import (
    MessageTooLarge,
    OffsetMismatch,
    OffsetOutOfRange,
    StorageError,
)
from brokerd.log.batch import (
    ATTR_COMPACTED,
    HEADER_SIZE,
    BatchHeader,
    crc_ok,
    decode_header,
    decode_records,
    encode_header,
    header_problem,
    mark_compacted,
)
from brokerd.log.config import LogConfig
from brokerd.log.files import fsync_dir, replace_atomically
from brokerd.log.index import NO_TIMESTAMP
from brokerd.log.producers import ProducerTable
from brokerd.log.segment import Segment, StoredBatch, segment_name

log = logging.getLogger("brokerd.log")
START_FILE = "start-offset"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class RecoveryReport:
    """What opening a partition found and repaired."""

    dropped_bytes: int = 0
    dropped_batches: int = 0
    rebuilt_indexes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.dropped_bytes or self.rebuilt_indexes or self.errors)


@dataclass
class FlushTicket:
    """Work for the flusher thread: fsync these descriptors (and maybe the folder)."""

    directory: Path
    fds: list[int]
    sync_dir: bool
    end_offset: int

    def run(self) -> None:
        try:
            for fd in self.fds:
                os.fsync(fd)
            if self.sync_dir:
                fsync_dir(self.directory)
        finally:
            for fd in self.fds:
                os.close(fd)


class PartitionLog:
    def __init__(self, directory: Path, config: LogConfig, sync_on_open: bool = True) -> None:
        self.directory = Path(directory)
        self.sync_on_open = sync_on_open
        self.config = config
        self.segments: list[Segment] = []
        self.producers = ProducerTable()
        self.recovery = RecoveryReport()
        self._dir_dirty = False
        self.durable_offset = 0
        """Every offset below this is fsynced (kept by whoever runs the flushes)."""
        self._deleted_below = 0
        """The start offset ``delete_records`` set (records below it are gone)."""
        self.high_watermark: int | None = None
        """Of a replicated partition: what every in-sync replica holds (reads stop there)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
            self._load_start()
        except BaseException:
            self.close()  # what failed must not keep descriptors open
            raise

    # -- opening and recovery ---------------------------------------------------------
    def _open(self) -> None:
        names = os.listdir(self.directory)  # once: a broker opens thousands of these
        for name in names:
            if name.endswith((".tmp", ".cleaned")):
                (self.directory / name).unlink()
        bases = sorted(int(n[:-4]) for n in names if n.endswith(".log") and n[:-4].isdigit())
        if not bases:
            self.segments.append(self._new_segment(0))
            fsync_dir(self.directory)
            return
        self.segments = [self._new_segment(b) for b in bases]
        for seg, next_seg in zip(self.segments, self.segments[1:]):
            self._open_closed(seg, next_seg.base_offset)
        self._recover_active()

    def _new_segment(self, base: int) -> Segment:
        return Segment(self.directory, base, self.config.index_interval_bytes,
                       self.config.max_batch_bytes)

    def _open_closed(self, seg: Segment, next_base: int) -> None:
        """Trust a closed segment's index, checking only from its last entry onward."""
        start, offset, max_ts = 0, seg.base_offset, NO_TIMESTAMP
        loaded = seg.index.load(seg.index_path, seg.size) and (len(seg.index) > 0 or seg.size == 0)
        if loaded and len(seg.index):  # an empty segment (all compacted away) has none
            start, offset = seg.index.positions[-1], seg.index.offsets[-1]
            max_ts = seg.index.max_ts_before[-1]
        result = seg.scan(start, offset, max_ts, dense=False)
        if not loaded or result.problem or result.valid_end != seg.size:
            result = seg.scan(0, seg.base_offset, NO_TIMESTAMP, dense=False, keep_headers=True)
            seg.rebuild_index(result.headers)
            seg.write_index()
            self.recovery.rebuilt_indexes.append(seg.index_path.name)
        if result.problem:
            seg.corrupt_at, seg.corrupt_why = result.valid_end, result.problem
            message = f"corrupt batch in {seg.log_path} at byte {result.valid_end}: {result.problem}"
            self.recovery.errors.append(message)
            log.error("%s; reads stop there", message)
        seg.next_offset = max(result.next_offset, next_base)
        seg.max_timestamp = result.max_timestamp

    def _recover_active(self) -> None:
        seg = self.segments[-1]
        base = seg.base_offset
        result = seg.scan(0, base, NO_TIMESTAMP, dense=True, keep_headers=True)
        if result.problem:
            dropped = seg.size - result.valid_end
            self.recovery.dropped_bytes += dropped
            self.recovery.dropped_batches += self._count_batches(seg, result.valid_end)
            log.warning("%s: %s at byte %d; dropped %d bytes", seg.log_path, result.problem,
                        result.valid_end, dropped)
            seg.truncate(result.valid_end)
        seg.rebuild_index(result.headers)
        seg.next_offset = result.next_offset
        seg.max_timestamp = result.max_timestamp
        if result.headers:
            seg.first_append_ms = result.headers[0][1].append_timestamp
        if self.sync_on_open:  # what a killed broker left in the page cache is durable now
            os.fsync(seg.fd)  # (or the registry syncs the whole file system once: syncfs)
        seg.dirty = False
        self.durable_offset = seg.next_offset
        self._load_producers(result.headers)

    @staticmethod
    def _count_batches(seg: Segment, pos: int) -> int:
        """Best-effort count of the batches in a damaged tail (at least one)."""
        count = 0
        while pos + HEADER_SIZE <= seg.size:
            header = decode_header(os.pread(seg.fd, HEADER_SIZE, pos))
            if header.payload_length > seg.max_batch_bytes:
                break
            count += 1
            pos += header.size
        return max(count, 1)

    def _load_producers(self, headers: list[tuple[int, BatchHeader]]) -> None:
        snapshot = self.directory / segment_name(self.segments[-1].base_offset, ".snapshot")
        try:
            self.producers = ProducerTable.from_bytes(snapshot.read_bytes())
        except (OSError, msgspec.DecodeError, ValueError, TypeError):
            self.producers = ProducerTable()
        for _, h in headers:
            if h.producer_id:
                self.producers.record(h.producer_id, h.base_sequence, h.record_count,
                                      h.base_offset)

    def _load_start(self) -> None:
        try:
            text = (self.directory / START_FILE).read_text()
        except FileNotFoundError:
            return
        try:
            self._deleted_below = min(int(text), self.end_offset)
        except ValueError:
            log.error("%s: ignoring a malformed %s (%r)", self.directory, START_FILE, text[:40])

    # -- offsets ----------------------------------------------------------------------
    @property
    def start_offset(self) -> int:
        return max(self.segments[0].base_offset, self._deleted_below)

    @property
    def end_offset(self) -> int:
        """The offset the next appended record will get."""
        return self.segments[-1].next_offset

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    # -- appending --------------------------------------------------------------------
    def append(self, payload: bytes | memoryview, record_count: int, first_timestamp: int,
               max_timestamp: int, producer_id: int = 0, base_sequence: int = -1,
               append_timestamp: int | None = None, expected_offset: int | None = None) -> int:
        """Append one batch and return its base offset.

        With a producer id, a retried batch raises ``DuplicateBatch`` (holding the offset it
        got the first time) and a gap raises ``OutOfOrderSequence``; with
        ``expected_offset``, a log that does not end there raises ``OffsetMismatch`` (after
        the duplicate check: a retry of a stored batch is still a duplicate); nothing is
        written.
        """
        if len(payload) > self.config.max_batch_bytes:  # recovery would take it for damage
            raise MessageTooLarge(f"batch of {len(payload)} bytes is over max_batch_bytes "
                                  f"({self.config.max_batch_bytes})")
        if producer_id:
            self.producers.check(producer_id, base_sequence, record_count)
        if expected_offset is not None and expected_offset != self.end_offset:
            raise OffsetMismatch(
                f"{self.directory.parent.name}[{self.directory.name}] ends at offset "
                f"{self.end_offset}, not {expected_offset}: another producer appended since")
        appended = now_ms() if append_timestamp is None else append_timestamp
        self._maybe_roll(HEADER_SIZE + len(payload), appended)
        base = self.end_offset
        header_bytes = encode_header(base, payload, record_count, first_timestamp,
                                     max_timestamp, appended, producer_id, base_sequence)
        self.segments[-1].append(decode_header(header_bytes), header_bytes, payload)
        if producer_id:
            self.producers.record(producer_id, base_sequence, record_count, base)
        return base

    def _maybe_roll(self, batch_size: int, now: int) -> None:
        active = self.segments[-1]
        if active.size == 0:
            return
        too_big = active.size + batch_size > self.config.segment_bytes
        too_old = (active.first_append_ms is not None
                   and now - active.first_append_ms >= self.config.segment_ms)
        if too_big or too_old:
            self.roll()

    def roll(self) -> None:
        """Close the active segment (index written, data fsynced) and start a new one."""
        active = self.segments[-1]
        try:
            os.fsync(active.fd)
            active.write_index()
            active.dirty = False
            active.drop_tail()
            base = active.next_offset
            replace_atomically(self.directory / segment_name(base, ".snapshot"),
                               self.producers.to_bytes())
            self.segments.append(self._new_segment(base))
            fsync_dir(self.directory)
        except OSError as exc:
            raise StorageError.of(f"cannot roll a segment in {self.directory}", exc) from exc
        self._drop_old_snapshots()

    def _drop_old_snapshots(self) -> None:
        keep = {segment_name(s.base_offset, ".snapshot") for s in self.segments[-2:]}
        for path in self.directory.glob("*.snapshot"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------
    def read(self, offset: int, max_bytes: int) -> list[StoredBatch]:
        """Whole batches from the one holding ``offset`` on, about ``max_bytes`` of them,
        below the high watermark of a replicated partition.

        Reading at the end offset returns nothing; outside [start, end] raises
        ``OffsetOutOfRange``.  At least one batch is returned when any exists.
        """
        batches = self.read_all(offset, max_bytes)
        hw = self.high_watermark
        if hw is not None:  # nothing past what every in-sync replica holds
            batches = [b for b in batches if b.header.base_offset < hw]
        return batches

    def read_all(self, offset: int, max_bytes: int,
                 verify: bool | None = None) -> list[StoredBatch]:
        """``read`` past the high watermark too (for followers, which copy everything);
        ``verify``: check each batch's CRC (default: the topic's ``verify_reads``)."""
        verify = self.config.verify_reads if verify is None else verify
        if offset < self.start_offset or offset > self.end_offset:
            raise OffsetOutOfRange(
                f"offset {offset} is outside {self.directory.parent.name}[{self.directory.name}]'s range "
                f"[{self.start_offset}, {self.end_offset}]"
            )
        active = self.segments[-1]
        if offset >= active.base_offset:  # at the tail, where consumers mostly read
            return active.read(offset, max_bytes, verify)
        out: list[StoredBatch] = []
        used = 0
        for seg in self._segments_from(offset):
            if used >= max_bytes:
                break
            batches = seg.read(offset, max_bytes - used, verify)
            out.extend(batches)
            used += sum(HEADER_SIZE + len(b.payload) for b in batches)
            if batches and batches[-1].header.next_offset < seg.next_offset:
                break  # stopped inside this segment: going on to the next would skip the rest
        return out

    def _segments_from(self, offset: int) -> list[Segment]:
        lo, hi = 0, len(self.segments) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.segments[mid].base_offset <= offset:
                lo = mid
            else:
                hi = mid - 1
        return self.segments[lo:]

    def offset_for_time(self, timestamp: int) -> int | None:
        """The first offset whose record timestamp is >= ``timestamp``, or None if none."""
        for seg in self.segments:
            if seg.max_timestamp < timestamp:
                continue
            offset, _ = seg.index.lookup_time(timestamp)
            for batch in seg.read(offset, seg.size, verify=False):
                found = self._first_at_or_after(batch, timestamp)
                if found is not None:
                    return found
        return None

    @staticmethod
    def _first_at_or_after(batch: StoredBatch, timestamp: int) -> int | None:
        header = batch.header
        if header.max_timestamp < timestamp:
            return None
        for i, record in enumerate(decode_records(batch.payload)):
            ts = header.append_timestamp if record.timestamp is None else record.timestamp
            if ts >= timestamp:
                return header.base_offset + i
        return None

    # -- retention --------------------------------------------------------------------
    def enforce_retention(self, now: int | None = None) -> int:
        """Delete whole old closed segments past the size or age limit; return how many."""
        now = now_ms() if now is None else now
        deleted = 0
        total = self.size_bytes
        while len(self.segments) > 1:
            oldest = self.segments[0]
            over_size = (self.config.retention_bytes >= 0
                         and total - oldest.size >= self.config.retention_bytes)
            too_old = (self.config.retention_ms >= 0
                       and oldest.max_timestamp < now - self.config.retention_ms)
            if not (over_size or too_old):
                break
            total -= oldest.size
            self.segments.pop(0).delete()
            deleted += 1
        if deleted:
            self._dir_dirty = True
            log.info("%s: retention deleted %d segment(s); start offset now %d",
                     self.directory, deleted, self.start_offset)
        return deleted

    def delete_records(self, offset: int) -> int:
        """Move the start offset up to ``offset`` (at most the end) for good; whole segments
        below it are deleted, the rest is hidden.  Returns the new start offset."""
        if offset > self.end_offset:
            raise OffsetOutOfRange(f"cannot delete records of {self.directory.parent.name}"
                                   f"[{self.directory.name}] up to {offset}: it ends at "
                                   f"{self.end_offset}")
        if offset <= self.start_offset:
            return self.start_offset
        try:
            replace_atomically(self.directory / START_FILE, str(offset).encode())
        except OSError as exc:
            raise StorageError(f"cannot store the start offset of {self.directory}: {exc}") from exc
        self._deleted_below = offset
        while len(self.segments) > 1 and self.segments[1].base_offset <= offset:
            self.segments.pop(0).delete()
            self._dir_dirty = True
        return self.start_offset

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Drop every batch and start empty at ``offset`` (> the end): a replica whose
        leader deleted the records it lacks (Kafka's ``truncateFullyAndStartAt``).  A
        crash halfway leaves fewer old segments and the start file: the replica asks its
        leader again and ends here anyway."""
        try:
            replace_atomically(self.directory / START_FILE, str(offset).encode())
            for seg in self.segments:
                seg.delete()
            self.segments = [self._new_segment(offset)]
        except OSError as exc:
            raise StorageError(f"cannot restart {self.directory} at {offset}: {exc}") from exc
        self._dir_dirty = True
        self.producers = ProducerTable()
        self._deleted_below = self.durable_offset = offset
        if self.high_watermark is not None:
            self.high_watermark = max(self.high_watermark, offset)

    # -- durability -------------------------------------------------------------------
    @property
    def needs_flush(self) -> bool:
        return self._dir_dirty or self.segments[-1].dirty

    def begin_flush(self) -> FlushTicket:
        """Hand what needs an fsync to the flusher (the loop keeps appending meanwhile).

        Raises OSError (out of descriptors, say) with nothing changed."""
        fds: list[int] = []
        try:
            for seg in self.segments:
                if seg.dirty:
                    fds.append(seg.dup_fd())
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        for s in self.segments:
            s.dirty = False
        ticket = FlushTicket(self.directory, fds, self._dir_dirty, self.end_offset)
        self._dir_dirty = False
        return ticket

    def flush(self) -> None:
        """fsync every appended byte (and the folder when files came or went)."""
        ticket = self.begin_flush()
        ticket.run()
        self.durable_offset = max(self.durable_offset, ticket.end_offset)

    def discard_unsynced(self) -> int:
        """After a failed fsync: cut the log back to its durable offset and return how many
        records that dropped.

        On Linux a failed fsync may have dropped the dirty pages, and a later fsync that
        succeeds says nothing about them (PostgreSQL's "fsyncgate"): nothing past the last
        offset known durable may be acknowledged, or answered as a duplicate of an earlier
        append.  So the log is re-read and cut there, and the index and the producer state
        are rebuilt from what is left: a producer's retry then appends the batch again.
        Closed segments were fsynced when they were rolled.
        """
        target = max(self.durable_offset, self.segments[-1].base_offset)
        dropped = self.end_offset - target
        self.truncate_to(target)
        log.error("%s: an fsync failed; dropped the %d record(s) past durable offset %d",
                  self.directory, dropped, target)
        return dropped

    def truncate_to(self, offset: int) -> int:
        """Cut every batch at or past ``offset`` (a batch holding it goes whole) and return
        the new end offset; rebuilds the index and the producer state from what is left."""
        while len(self.segments) > 1 and self.segments[-1].base_offset >= offset:
            self.segments.pop().delete()
            self._dir_dirty = True
        seg = self.segments[-1]
        result = seg.scan(0, seg.base_offset, NO_TIMESTAMP, dense=True, keep_headers=True)
        kept = [(pos, h) for pos, h in result.headers if h.next_offset <= offset]
        cut = next((pos for pos, h in result.headers if h.next_offset > offset),
                   result.valid_end)
        try:
            seg.truncate(cut)
        except OSError as exc:
            raise StorageError.of(f"cannot cut {seg.log_path} back to {cut}", exc) from exc
        seg.rebuild_index(kept)
        seg.next_offset = kept[-1][1].next_offset if kept else seg.base_offset
        seg.max_timestamp = max((h.max_timestamp for _, h in kept), default=NO_TIMESTAMP)
        self._load_producers(kept)
        self._deleted_below = min(self._deleted_below, self.end_offset)
        self.durable_offset = min(self.durable_offset, self.end_offset)
        if self.high_watermark is not None:
            self.high_watermark = min(self.high_watermark, self.end_offset)
        return self.end_offset

    def append_replica(self, header_bytes: bytes, payload: bytes | memoryview) -> None:
        """Append a batch exactly as the leader stored it (same offsets, timestamps and
        producer fields), after checking it follows this log's end and its CRC."""
        header = decode_header(header_bytes)
        gap = header.base_offset > self.end_offset and self.config.cleanup_policy == "compact"
        if header.base_offset != self.end_offset and not gap:
            raise StorageError(f"{self.directory}: a replicated batch starts at "
                               f"{header.base_offset}, the log ends at {self.end_offset}")
        problem = header_problem(header, self.config.max_batch_bytes)
        if not problem and header.payload_length != len(payload):
            problem = f"{len(payload)} payload bytes, the header says {header.payload_length}"
        if problem or not crc_ok(header_bytes + bytes(payload), 0, header):
            raise StorageError(f"{self.directory}: a replicated batch is damaged: "
                               f"{problem or 'bad CRC'}")
        if gap and not header.attributes & ATTR_COMPACTED:
            # The leader's cleaner dropped the records before it (a batch that survived
            # whole keeps its flags there): flagged here, the recovery's dense scan of this
            # active segment accepts the gap, as it does after the cleaner's own batches.
            header_bytes = mark_compacted(header_bytes, payload)
            header = decode_header(header_bytes)
        self._maybe_roll(header.size, header.append_timestamp)
        self.segments[-1].append(header, header_bytes, payload)
        if header.producer_id:
            self.producers.record(header.producer_id, header.base_sequence,
                                  header.record_count, header.base_offset)

    @property
    def visible_end(self) -> int:
        """The end consumers may read to: the high watermark of a replicated partition."""
        hw = self.high_watermark
        return self.end_offset if hw is None else hw

    def close(self) -> None:
        for seg in self.segments:
            seg.close()
