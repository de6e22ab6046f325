"""The deterministic sender: produce batches under producer ids derived from names.

A task's outputs are numbered per (producer id, partition) by sequences the task stores
with its state, so a batch sent again after a crash carries the same numbers and the
broker drops it as a duplicate (docs/protocol.md §8).  On a cluster the same makes a
leader failover harmless: what a dead or moved leader did not answer goes again to the
next one (``_wait``), which holds the producer state that rode in the replicated batches.
Not thread-safe: one task loop owns it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Literal

import msgspec

from brokerd import protocol as p
from runtime.connection import BrokerError, Connection
from runtime.routing import Router
from runtime.streams.errors import Fenced, StreamsError

# A leader that moved or died: its partitions' requests go again (same producer ids and
# sequences) to the leader metadata names next, for up to FAILOVER_S (longer than a
# ZooKeeper session: until it ends, metadata names the dead leader), RETRY_S apart.
FAILOVER_CODES = frozenset({"NOT_LEADER", "FENCED_LEADER_EPOCH", "UNAVAILABLE",
                            "NOT_ENOUGH_REPLICAS", "SHUTTING_DOWN"})
FAILOVER_S = 60.0
RETRY_S = 0.2
_raw_list = msgspec.msgpack.Decoder(list[msgspec.Raw])
_encoder = msgspec.msgpack.Encoder()


def producer_id(*names: str) -> int:
    """A producer id (1 … 2⁶³−1) that is the same wherever and whenever ``names`` are."""
    digest = hashlib.blake2b("\x00".join(names).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & (2**63 - 1)) or 1


@dataclass
class OutBatch:
    """One produce request, numbered before it is sent, stored before it is sent.

    ``records`` is the msgpack array of ``[value, key, headers, timestamp]`` records;
    ``probe``: send it one record at a time until the broker stores one (see ``Sender``).
    """

    topic: str
    partition: int
    producer_id: int
    sequence: int
    count: int
    records: bytes
    probe: bool = False


@dataclass
class Sent:
    """One produce request of a batch (all of it, or a probe's part), as sent: what a
    resend after a leader failover sends again, under the same sequence."""

    batch: OutBatch
    sequence: int
    records: bytes
    expected_offset: int | None
    rid: int


@dataclass
class Sending:
    """Batches ``Sender.start`` sent: the requests not answered yet, and the probed
    batches it found not stored before."""

    pending: list[Sent]
    settled: list[OutBatch]
    tail: OutBatch | None = None  # sent by ``finish`` once all the others are stored
    tail_at: int | None = None  # where the tail's partition must end (expected_offset)


class Sender:
    """Sends ``OutBatch``es in order and waits until the broker stored (or had) each.

    A normal batch is one produce; the broker appends it or answers ``duplicate``.  A probe
    batch holds records that may be partly stored already, under other batch boundaries
    (a task restored from its changelog replays inputs its lost predecessor had already
    turned into outputs): each record goes alone, and is either a duplicate or the next one
    the broker expects; from the first one stored on, the rest go as one batch.
    """

    def __init__(self, conn: Connection | Router, acks: Literal[0, 1, "all"] = "all") -> None:
        self.conn = conn
        self.acks = acks
        # On a cluster a request refused as moved, or unanswered (a dead leader), goes
        # again to the partition's leader as metadata names it, for up to FAILOVER_S.
        self.failover_s = FAILOVER_S if isinstance(conn, Router) else 0.0
        self.duplicates = 0  # batches or probe records the broker already had
        # where a tail's partition ended after it was stored (its reply's offsets): the
        # fenced sends (expected_offset) only
        self.ends: dict[tuple[str, int], int] = {}

    def send_all(self, batches: list[OutBatch]) -> list[OutBatch]:
        """Send ``batches``; return those a probe found not stored before (now stored)."""
        return self.finish(self.start(batches))

    def start(self, batches: list[OutBatch], tail: OutBatch | None = None,
              tail_at: int | None = None) -> Sending:
        """Send ``batches`` in order, waiting only where a probe must (``finish`` waits
        for the rest): the caller works on while the broker stores them.  ``tail`` (a
        changelog batch) waits in the returned ``Sending`` until they are all stored; it
        is appended only if its partition ends at ``tail_at`` then (its writer's fence:
        ``Fenced`` if not), and ``ends`` says where the partition ended after it."""
        if tail is not None:
            self.ends.pop((tail.topic, tail.partition), None)
        sending = Sending([], [], tail, tail_at)
        fresh: set[tuple[str, int]] = set()  # a probe stored a record there: the rest is new
        for batch in batches:
            if batch.probe and (batch.topic, batch.partition) not in fresh:
                self._wait(sending.pending)
                sending.pending = []
                if self._probe(batch):
                    sending.settled.append(batch)
                    fresh.add((batch.topic, batch.partition))
            else:
                sending.pending.append(self._send(batch, batch.sequence, batch.records))
        return sending

    def pump(self, sending: Sending) -> None:
        """Take the replies that are in, without waiting; once every batch is stored, send
        the tail.  Called between parts of the next batch of work, so that the tail is
        usually sent and stored by the time ``finish`` is called."""
        pending = sending.pending
        done = 0
        while done < len(pending) and self.conn.arrived(pending[done].rid, 0):
            try:
                self._reply(pending[done])
            except BrokerError as exc:
                if not self._moved(exc, None):
                    raise
                self._resend(pending, done, time.monotonic())  # ``finish`` waits for them
                break
            done += 1
        if done:
            del pending[:done]
        if not pending and sending.tail is not None:
            tail, sending.tail = sending.tail, None
            pending.append(self._send(tail, tail.sequence, tail.records, sending.tail_at))

    def finish(self, sending: Sending) -> list[OutBatch]:
        """Wait until every batch ``start`` sent (and the tail) is stored (or was); return
        those a probe found not stored before (now stored)."""
        self._wait(sending.pending)
        sending.pending = []
        if sending.tail is not None:
            tail, sending.tail = sending.tail, None
            self._wait([self._send(tail, tail.sequence, tail.records, sending.tail_at)])
        return sending.settled

    def _send(self, batch: OutBatch, sequence: int, records: bytes,
              expected_offset: int | None = None) -> Sent:
        rid = self.conn.send(p.Produce(topic=batch.topic, partition=batch.partition,
                                       records=msgspec.Raw(records), acks=self.acks,
                                       producer_id=batch.producer_id, sequence=sequence,
                                       expected_offset=expected_offset))
        return Sent(batch, sequence, records, expected_offset, rid)

    def _wait(self, pending: list[Sent]) -> bool:
        """Wait for every reply, in order.  On a cluster, a request refused as moved or
        unanswered sends it and every one after it again, in order (each partition's
        leader as metadata names it now), with the same producer ids and sequences: what
        the old leader had replicated is a duplicate on the new one.  Whether the last
        one was stored just now (not a duplicate)."""
        since = None
        stored = False
        i = 0
        while i < len(pending):
            try:
                stored = self._reply(pending[i])
            except BrokerError as exc:
                if since is None:
                    since = time.monotonic()
                if not self._moved(exc, since):
                    raise
                time.sleep(RETRY_S)
                self._resend(pending, i, since)
                continue
            i += 1
        return stored

    def _moved(self, exc: BrokerError, since: float | None) -> bool:
        """Whether to send again what ``exc`` refused: on a cluster, for a leader that
        moved or died, until FAILOVER_S after the first such refusal."""
        return (exc.code in FAILOVER_CODES and self.failover_s > 0
                and (since is None or time.monotonic() - since < self.failover_s))

    def _resend(self, pending: list[Sent], start: int, since: float) -> None:
        """Send ``pending[start:]`` again, in order (their earlier replies are not awaited);
        a send that fails (no leader known yet) is tried again."""
        j = start
        while j < len(pending):
            sent = pending[j]
            self.conn.forget(sent.rid)  # its reply, if one comes, is not waited for
            try:
                pending[j] = self._send(sent.batch, sent.sequence, sent.records,
                                        sent.expected_offset)
            except BrokerError as exc:
                if not self._moved(exc, since):
                    raise
                time.sleep(RETRY_S)
                continue
            j += 1

    def _reply(self, sent: Sent) -> bool:
        """Wait for the reply to ``sent``; True when the broker stored it just now."""
        batch = sent.batch
        try:
            reply = self.conn.wait(sent.rid)
        except BrokerError as exc:
            if exc.code == "OUT_OF_ORDER_SEQUENCE":
                raise StreamsError(
                    f"{batch.topic}[{batch.partition}] refused sequence {batch.sequence} of "
                    f"producer {batch.producer_id}: the broker lost records this task had "
                    f"stored (or forgot the producer): {exc.message}") from exc
            if exc.code == "OFFSET_MISMATCH":
                raise Fenced(f"{batch.topic}[{batch.partition}]: another replica wrote this "
                             f"task's changelog since it restored ({exc.code}: "
                             f"{exc.message}): this one leaves the group to restore from the "
                             "changelog") from exc
            raise
        if reply.duplicate:
            self.duplicates += 1
        if sent.expected_offset is not None:
            for _part, base, count in reply.offsets:
                self.ends[(batch.topic, batch.partition)] = base + count
        return not reply.duplicate

    def _probe(self, batch: OutBatch) -> bool:
        records = _raw_list.decode(batch.records)
        for i, record in enumerate(records):
            one = b"\x91" + bytes(record)  # a msgpack array of one element
            if self._wait([self._send(batch, batch.sequence + i, one)]):
                rest = records[i + 1:]
                if rest:
                    self._wait([self._send(batch, batch.sequence + i + 1,
                                           _encoder.encode(rest))])
                return True
        return False
