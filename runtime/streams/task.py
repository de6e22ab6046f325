"""A task: one input partition of a pipeline, its stores, its outputs, its exact commits.

The cycle (``process`` then ``commit``):

1. process events from ``offset`` on, in order: stores change in their caches, outputs
   queue up per output partition;
2. number the outputs with this task's sequences and build the changelog batch (the dirty
   keys, then the checkpoint); write store updates + checkpoint + those batches (the
   outbox) to SQLite in one transaction;
3. send the outbox: the outputs, then (once they are acknowledged) the changelog batch;
   wait for every ack before the next commit's step 2 replaces the outbox (``settle``), so
   the next events are processed while the broker stores the outputs.  The runner
   settles every task before it polls again, so a partition never moves with a batch in
   flight.

A kill -9 before 2 ends loses nothing: the inputs come again from the stored offset.  After
2, the outbox is sent again under the same sequences, and the broker drops what it has.
Not thread-safe: the runner's thread owns its tasks.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from brokerd.protocol import partition_for_key
from runtime.connection import Connection
from runtime.consumer import Batch, Event
from runtime.dlq import dead_letter_headers, dlq_topic
from runtime.routing import Router
from runtime.streams import changelog
from runtime.streams.checkpoint import Checkpoint
from runtime.streams.errors import StreamsError
from runtime.streams.localstore import LocalStore, local_file
from runtime.streams.sender import OutBatch, Sender, Sending, producer_id
from runtime.streams.state import StateStore

if TYPE_CHECKING:
    from runtime.streams.pipeline import Pipeline

T = TypeVar("T")
BATCH_RECORDS = 10_000  # records per produce at most (fewer requests, fewer replies)
BATCH_BYTES = 4 * 1024 * 1024  # and bytes: half the default max_batch_bytes
MAX_SEQUENCE = 2**31 - 1
_CACHED_KEYS = frozenset({str, bytes, int, type(None)})  # keys whose partition is cached
_encode = msgspec.msgpack.Encoder().encode
log = logging.getLogger("rail.streams")


def _fitted(records: list[list[Any]]) -> list[tuple[list[list[Any]], bytes]]:
    """``records`` encoded, cut in halves until each part is at most BATCH_BYTES."""
    encoded = _encode(records)
    if len(encoded) <= BATCH_BYTES or len(records) == 1:
        return [(records, encoded)]
    half = len(records) // 2
    return _fitted(records[:half]) + _fitted(records[half:])


def _array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` items (the shortest form, as encoded)."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 2**16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _joined(runs: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Encoded arrays of records, the consecutive ones joined into one array each (the
    records of a produce) up to BATCH_RECORDS records and BATCH_BYTES bytes; a run past
    either alone stays alone."""
    out: list[tuple[int, bytes]] = []
    bodies: list[memoryview] = []
    count = size = 0
    for n, encoded in runs:
        body = memoryview(encoded)[len(_array_header(n)):]
        if bodies and (count + n > BATCH_RECORDS or size + len(body) > BATCH_BYTES):
            out.append((count, _array_header(count) + b"".join(bodies)))
            bodies, count, size = [], 0, 0
        bodies.append(body)
        count += n
        size += len(body)
    if bodies:
        out.append((count, _array_header(count) + b"".join(bodies)))
    return out


class Task:
    def __init__(self, pipeline: Pipeline, topic: str, partition: int, conn: Connection | Router,
                 sender: Sender, partitions: dict[str, int], state_dir: Path) -> None:
        self.pipeline = pipeline
        self.topic = topic
        self.partition = partition
        self.root = pipeline.root(topic)
        self.conn = conn
        self.sender = sender
        self.partitions = partitions
        self.changelog = pipeline.changelog(topic)
        self.producer_id = producer_id(pipeline.app, topic, str(partition))
        self.disk = LocalStore(local_file(state_dir, pipeline.app, topic, partition))
        self.stores: dict[str, StateStore] = {}
        self._locals: dict[str, Any] = {}
        self.out: dict[tuple[str, int], list[list[Any]]] = {}
        # (topic, key) -> its queue in ``out``: a key's partition is hashed once per commit
        self._queues: dict[tuple[str, type, Any], list[list[Any]]] = {}
        # Outputs a stateless chain encoded as it made them, while they were fresh in the
        # CPU's caches (encoding them at the commit took 3 times as long): per output
        # partition, (record count, msgpack array of the records).  Only the chain writes
        # to its output topic (runtime.streams.chain), so nothing in ``out`` is interleaved.
        self.encoded: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
        self._parts: dict[tuple[str, type, Any], int] = {}  # as _queues, for partition_of
        self.seqs: dict[tuple[str, int], int] = {}
        # Output partitions where this task has stored a record since it started: until
        # then, outputs are probed (Sender), as a previous owner may have stored some.
        self.settled: set[tuple[str, int]] = set()
        self.ck = Checkpoint()
        # The last commit's batches while unacknowledged, and what acknowledges the
        # changelog batch among them: (commit, incarnation) to confirm.
        self._sending: Sending | None = None
        self._confirms: tuple[int, str] | None = None
        # Where the changelog partition ends: this task's next changelog batch is appended
        # only there (expected_offset), so a zombie's batch never lands between a new
        # owner's, nor the new owner's after a zombie's (Fenced).  Set by ``restore``.
        self.changelog_end = 0
        self.processed_since_commit = 0
        self.restored_from = ""  # "local", "changelog" or "nothing", for logs and tests

    # -- state seen by operators ------------------------------------------------------
    @property
    def offset(self) -> int:
        return self.ck.offset

    def store(self, name: str) -> StateStore:
        try:
            return self.stores[name]
        except KeyError:
            store = self.stores[name] = StateStore(name, self.disk)
            return store

    def local(self, name: str, make: Callable[..., T], *args: Any) -> T:
        """Per-task operator state rebuilt from the stores: ``make(*args)`` on first use."""
        try:
            return self._locals[name]
        except KeyError:
            value = self._locals[name] = make(*args)
            return value

    def emit(self, topic: str, key: Any, value: Any, ts: int,
             headers: dict[str, Any] | None = None) -> None:
        cls = key.__class__
        queue = self._queues.get((topic, cls, key)) if cls in _CACHED_KEYS else None
        if queue is None:
            queue = self.queue(topic, key)
        queue.append([value, key, headers, ts])

    def queue(self, topic: str, key: Any) -> list[list[Any]]:
        """The output queue of ``key``'s partition of ``topic``."""
        cls = key.__class__
        cached = (topic, cls, key)  # the class too: 1 and True hash alike
        queue = self._queues.get(cached) if cls in _CACHED_KEYS else None
        if queue is None:
            count = self.partitions[topic]
            part = self.partition % count if key is None else partition_for_key(key, count)
            queue = self.out.setdefault((topic, part), [])
            if cls in _CACHED_KEYS:
                self._queues[cached] = queue
        return queue

    def partition_of(self, topic: str, key: Any) -> int:
        """The partition of ``topic`` that ``key`` goes to (as ``queue`` picks it)."""
        cls = key.__class__
        cached = (topic, cls, key)
        part = self._parts.get(cached) if cls in _CACHED_KEYS else None
        if part is None:
            count = self.partitions[topic]
            part = self.partition % count if key is None else partition_for_key(key, count)
            if cls in _CACHED_KEYS:
                self._parts[cached] = part
        return part

    def add_encoded(self, topic: str, part: int, records: list[Any]) -> None:
        """Queue ``records`` (``[value, key, headers, timestamp]`` each) for ``topic[part]``,
        encoded now; after what was queued there before, before what comes next."""
        runs = self.encoded.setdefault((topic, part), [])
        for chunk, encoded in _fitted(records):
            runs.append((len(chunk), encoded))

    # -- restore ----------------------------------------------------------------------
    def restore(self) -> None:
        """Resume from the local file when the changelog agrees it is current, else from
        the changelog; then send the outbox a crash left unsent."""
        mine = self.disk.checkpoint()
        last, self.changelog_end = changelog.last_checkpoint_at(self.conn, self.changelog,
                                                               self.partition)
        known = {(mine.commit, mine.incarnation)} if mine else set()
        confirmed = self.disk.confirmed()
        if confirmed:
            known.add(confirmed)
        if mine is not None and (last is None or (last.commit, last.incarnation) in known):
            # Another host may have had the partition since, and stored outputs past this
            # checkpoint without reaching the changelog: the outbox's outputs are probed
            # (not its changelog batch, which must stay whole; nobody else wrote there, or
            # ``last`` would show it), as are all outputs until settled.
            self._adopt(mine)
            self.restored_from = "local"
            if confirmed != (mine.commit, mine.incarnation):  # killed before all was sent
                before = self.sender.duplicates
                self._send([b if b.topic == self.changelog else replace(b, probe=True)
                            for b in self.disk.outbox()])
                log.info("%s[%d]: sent the outbox of commit %d again (%d duplicates dropped)",
                         self.topic, self.partition, mine.commit,
                         self.sender.duplicates - before)
            return
        if last is None:
            self.disk.reset()
            self._adopt(self._incarnation(Checkpoint()))
            self.restored_from = "nothing"
            return
        got = changelog.read(self.conn, self.changelog, self.partition)
        assert got.checkpoint is not None  # last_checkpoint found one
        restored = got.checkpoint
        self.changelog_end = got.end_offset
        self.disk.replace_all(restored, got.updates)
        self.disk.confirm(restored.commit, restored.incarnation)
        # Outputs past this checkpoint may be stored already (its writer died before its
        # next changelog batch): probe every output partition until caught up.
        self._adopt(self._incarnation(restored))
        self.restored_from = "changelog"
        log.info("%s[%d]: restored %d store records from %s up to commit %d", self.topic,
                 self.partition, len(got.updates), self.changelog, restored.commit)

    def _incarnation(self, ck: Checkpoint) -> Checkpoint:
        """``ck`` as a new incarnation's: a random id, and a changelog producer id of its
        own, starting at sequence 0."""
        ck.incarnation = secrets.token_hex(8)
        ck.writer = producer_id(self.pipeline.app, self.changelog, str(self.partition),
                                ck.incarnation)
        ck.changelog_seq = 0
        return ck

    def _adopt(self, ck: Checkpoint) -> None:
        self.ck = ck
        self.seqs = {(t, part): seq for t, part, seq in ck.seqs}

    @property
    def changelog_pid(self) -> int:
        """This incarnation's changelog producer id; for a checkpoint from before
        incarnations had their own, the one they all shared."""
        return self.ck.writer or producer_id(self.pipeline.app, self.changelog,
                                             str(self.partition))

    # -- processing -------------------------------------------------------------------
    @property
    def takes_batches(self) -> bool:
        """The pipeline runs consumer batches as they come (``process_batch``)."""
        return self.root.run_batch is not None

    def process_batch(self, batch: Batch) -> None:
        """Run ``batch`` through the pipeline's chain (see ``takes_batches``), from the next
        offset on: records before it (delivered again) are skipped, as is a batch that
        does not reach it or starts past it."""
        offset, base, records = self.ck.offset, batch.base_offset, batch.records
        if base != offset:
            if not base < offset < base + len(records):
                return
            records = records[offset - base:]
            batch = Batch(batch.topic, batch.partition, offset, batch.timestamp, records,
                          batch.end_offset)
        assert self.root.run_batch is not None
        self.root.run_batch(self, batch,
                            self.pipeline.decode if self.topic == self.pipeline.source else None)
        self.ck.offset += len(records)
        self.processed_since_commit += len(records)

    def process(self, events: list[Event]) -> None:
        """Run ``events`` through the pipeline, skipping any not at the next offset (a
        delivery from before a seek, or again)."""
        offset = self.ck.offset
        if events and events[0].offset == offset and \
                events[-1].offset == offset + len(events) - 1:
            self._run(events)  # the usual case: the next offsets, in a row
            return
        for event in events:
            if event.offset == self.ck.offset:
                self._run([event])

    def _run(self, events: list[Event]) -> None:
        """Process ``events``, whose offsets follow the checkpoint's without a gap."""
        decode = self.pipeline.decode if self.topic == self.pipeline.source else None
        if self.root.run is not None:  # the first operator takes the batch
            self.root.run(self, events, decode)
        else:
            push, ck = self.root.push, self.ck
            for event in events:
                try:
                    value = event.value if decode is None else decode(event.value)
                    ts = event.timestamp
                    if ts > ck.stream_time:  # noqa: PLR1730 - faster than max()
                        ck.stream_time = ts
                    push(self, event.key, value, ts)
                except Exception as exc:  # noqa: BLE001 - any failure of user code
                    self.dead_letter(event, exc)
        self.ck.offset += len(events)
        self.processed_since_commit += len(events)

    def dead_letter(self, event: Event, exc: Exception) -> None:
        """Send ``event`` to the source's DLQ, numbered like any output (exact too)."""
        self.ck.dead_letters += 1
        self.emit(dlq_topic(event.topic), event.key, event.value, event.timestamp,
                  dead_letter_headers(event, exc, 1))

    # -- commit -----------------------------------------------------------------------
    def dirty_keys(self) -> int:
        """How many store keys changed since the last commit (at most)."""
        return sum(len(store.dirty) for store in self.stores.values())

    def commit(self) -> bool:
        """Store and send what was processed since the last commit; False if nothing was."""
        if not self.processed_since_commit:
            return False
        self.settle()  # the outbox about to be replaced must be stored first
        batches = self._number_outputs()
        updates = [u for name in sorted(self.stores) for u in self.stores[name].take_updates()]
        ck = self.ck
        ck.commit += 1
        ck.seqs = [(t, part, seq) for (t, part), seq in sorted(self.seqs.items())]
        base = ck.changelog_seq
        ck.changelog_seq = self._check_room(base, len(updates) + 1, self.changelog)
        records, count = changelog.batch_records(updates, ck, max(ck.stream_time, 0))
        batches.append(OutBatch(self.changelog, self.partition, self.changelog_pid, base,
                                count, records))
        self.disk.commit(ck, updates, batches)
        self._start(batches)
        self.processed_since_commit = 0
        return True

    def _number_outputs(self) -> list[OutBatch]:
        batches = []
        for topic, part in sorted(self.out.keys() | self.encoded.keys()):
            records = self.out.get((topic, part), [])
            runs = [(len(chunk), encoded) for i in range(0, len(records), BATCH_RECORDS)
                    for chunk, encoded in _fitted(records[i:i + BATCH_RECORDS])]
            probe = (topic, part) not in self.settled
            for count, encoded in _joined(runs + self.encoded.get((topic, part), [])):
                seq = self.seqs.get((topic, part), 0)
                self.seqs[(topic, part)] = self._check_room(seq, count, topic)
                batches.append(OutBatch(topic, part, self.producer_id, seq, count, encoded,
                                        probe))
        self.out.clear()
        self.encoded.clear()
        self._queues.clear()
        self._parts.clear()
        return batches

    @staticmethod
    def _check_room(seq: int, count: int, topic: str) -> int:
        if seq + count > MAX_SEQUENCE:
            raise StreamsError(f"sequence numbers of {topic} would pass 2^31-1: start the "
                               "application under a new name")
        return seq + count

    def _send(self, batches: list[OutBatch]) -> None:
        self._start(batches)
        self.settle()

    def _start(self, batches: list[OutBatch]) -> None:
        """Send ``batches``; a changelog batch (last) goes once the outputs are stored, so a
        checkpoint in the changelog always has its outputs stored (``settle`` sends it)."""
        if batches and batches[-1].topic == self.changelog:
            self._sending = self.sender.start(batches[:-1], tail=batches[-1],
                                              tail_at=self.changelog_end)
            self._confirms = (self.ck.commit, self.ck.incarnation)
        else:
            self._sending = self.sender.start(batches)

    @property
    def in_flight(self) -> bool:
        """The last commit's batches are not all acknowledged yet (see ``settle``)."""
        return self._sending is not None

    def pump(self) -> None:
        """Take the last commit's acknowledgements that are in and send its changelog
        batch once its outputs are stored (no waiting: see Sender.pump)."""
        if self._sending is not None:
            self.sender.pump(self._sending)

    def settle(self) -> None:
        """Wait for the acknowledgements of the last commit's batches (if not yet)."""
        sending, confirms = self._sending, self._confirms
        if sending is None:
            return
        for batch in self.sender.finish(sending):
            self.settled.add((batch.topic, batch.partition))
        self._sending = self._confirms = None
        if confirms is not None:
            self.disk.confirm(*confirms)
            end = self.sender.ends.get((self.changelog, self.partition))
            self.changelog_end = end if end is not None else changelog.end_offset(
                self.conn, self.changelog, self.partition)  # a duplicate too old to name

    def close(self) -> None:
        self.disk.close()
