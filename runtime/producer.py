"""The batching, pipelined, idempotent producer: see ``runtime.client``.

A partition's batches reach the broker in sequence order: at most ``max_in_flight`` (16)
of a partition and MAX_REQUESTS (500) requests are in flight, so ZeroMQ's queues never
refuse a request or drop a reply; a batch that could not be queued holds back the later
ones of its partition; a partition's first batch goes alone until acknowledged; an
OUT_OF_ORDER_SEQUENCE resends the partition's unacked batches in order, at once.  A
partition's batches past its ``max_in_flight`` wait in the producer, in order, while the
other partitions' go on, once its oldest batch waited STUCK_S (a stuck partition, whose
leader is paused or short of in-sync replicas, must not stall them); ``send`` waits then
only once MAX_WAITING records wait so.

Batches that are ready together (a linger round, a flush, the batches a first
acknowledgement released) travel together: one ``produce_batches`` request carries up to
MAX_BATCHES of them, each acknowledged, refused or retried on its own.  With keys spread
over 1,000 partitions a batch holds a few records, and a request per batch would cost the
broker more than the records.

In a cluster (``broker`` may list several bootstrap endpoints, comma-separated) each
partition's batches go to its leader, over one connection per broker.  A batch refused
because leadership moved (NOT_LEADER, NOT_ENOUGH_REPLICAS, a fenced epoch, a withdrawn
leader's STORAGE_ERROR), or in flight on a connection that dropped, waits with the rest of
its partition until fresh metadata names the new leader, then goes there with the same
producer id and sequence: the new leader holds the producer state that rode in the
replicated batches, so a batch the old leader had stored is recognised as a duplicate, not
stored twice.

Used from one thread at a time; its own lock guards it against its linger thread.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import msgspec
import zmq

from brokerd import protocol as p
from runtime.connection import (
    DEFAULT_BROKER,
    BrokerError,
    BrokerUnavailable,
    Connection,
    check,
    keep_error,
)
from runtime.routing import bootstrap_list, call_any, leaders_of, metadata_from_any

_encode = msgspec.msgpack.Encoder().encode
# A prebuilt decoder: msgspec.msgpack.decode(body, type=p.Reply) rebuilds the union's
# type tree on every call (12 us an ack against 0.3 us).
_decode_reply = msgspec.msgpack.Decoder(p.Reply).decode
RETRIABLE = {"STORAGE_ERROR", "UNAVAILABLE", "SHUTTING_DOWN"}
# A create_topic refused so goes to the next broker of a cluster.
CREATE_ELSEWHERE = frozenset({"UNAVAILABLE", "NOT_CONTROLLER", "SHUTTING_DOWN"})
WINDOW = p.IDEMPOTENCE_WINDOW  # batches per partition the broker recognises retries among
# Produce requests in flight on the connection, all partitions together.  Each is one
# message in ZeroMQ's queues, which hold 1,000 (SNDHWM, RCVHWM): past that the producer's
# DEALER refuses a send (a hole in its partition's sequence) and the broker's ROUTER drops
# a reply (a wait for the request timeout).  Resends may leave old copies queued: half.
MAX_REQUESTS = 500
MAX_BATCHES = 1024  # batches in one produce_batches request
MAX_WAITING = 100_000  # records of a partition waiting behind its max_in_flight batches
STUCK_S = 0.2  # a partition whose oldest batch waits this long no longer holds up sends
LINGER_REQUESTS = 4  # a linger round ships only while fewer requests than this are unanswered
BUSY_S = 0.1  # ... counting those sent this recently (older ones wait on a stuck partition)
# A request body over this is split in two (the broker's default max_request_bytes is 16 MiB).
SPLIT_BYTES = p.MAX_REQUEST_BYTES // 2
Callback = Callable[[int, int, "BrokerError | None"], None]
RECHECK_S = 0.1  # a wait for acks looks this often whether the connection came back
# Codes that say a partition's leader is elsewhere (or not yet ready): wait for metadata.
LEADER_MOVED = {"NOT_LEADER", "NOT_ENOUGH_REPLICAS", "FENCED_LEADER_EPOCH",
                "UNKNOWN_LEADER_EPOCH",
                "STORAGE_ERROR"}  # a leader whose disk refused a write withdraws (cluster.md)
REFRESH_S = 0.1  # metadata is asked for at most this often while partitions wait for it


@dataclass
class _Batch:
    topic: str
    partition: int
    records: list[tuple[Any, ...]]
    sequence: int
    callbacks: list[Callback] = field(default_factory=list)
    producer_id: int = 0  # fixed at its first send: a retry must be recognisable
    body: bytes = b""
    request_id: int = 0
    first_sent_at: float = 0.0
    sent_at: float = 0.0
    attempts: int = 0
    in_flight: bool = False  # sent as part of request ``request_id``, not yet answered


@dataclass
class _Request:
    """One request in flight: its batches, how many of them still wait for its reply (a
    batch resent in a later request no longer does), and the connection it went on."""

    batches: list[_Batch]
    live: int
    conn: Connection


class _Cluster:
    """A producer's view of a cluster: the bootstrap endpoints, whether the brokers form a
    cluster, the leader's endpoint per partition (None: no leader known), a connection per
    broker, and the partitions that wait for metadata to name their leader."""

    def __init__(self, bootstrap: list[str], first: Connection) -> None:
        self.bootstrap = bootstrap
        self.clustered = False
        self.leaders: dict[tuple[str, int], str | None] = {}
        self.conns: dict[str, Connection] = {first.endpoint: first}
        self.brokers: list[str] = []
        self.moved: set[tuple[str, int]] = set()
        self.refresh_at = 0.0
        self.poller: zmq.Poller | None = None


class Producer:
    """Send events to topics; see the module docstring.  ``acks``: 0, 1, "all", or None
    (the default): by the brokers, "all" on a cluster (what a leader alone acknowledged is
    lost if it dies before its followers copy it) and 1 on a single broker (what it
    acknowledged survives its kill -9).  The producer learns which from the first
    metadata it reads, before the first batch of a topic leaves; until then it is "all"
    given several endpoints and 1 given one."""

    def __init__(self, broker: str = DEFAULT_BROKER, *, acks: int | str | None = None,
                 batch_size: int = 1000, linger_ms: float = 5.0, max_in_flight: int = 16,
                 idempotent: bool = True, request_timeout_s: float = 10.0,
                 delivery_timeout_s: float = 120.0) -> None:
        if acks not in (None, 0, 1, "all"):
            raise ValueError("acks must be 0, 1, 'all' or None (by the brokers)")
        bootstrap = bootstrap_list(broker, DEFAULT_BROKER)
        self._acks_unknown = acks is None  # learned from the first metadata (_learn)
        if acks is None:
            acks = "all" if len(bootstrap) > 1 else 1
        self._acks: int | str = acks
        self.conn = Connection(bootstrap[0], timeout_s=request_timeout_s,
                               watch_reconnects=acks != 0)
        self.batch_size = batch_size
        self.linger_s = linger_ms / 1000
        self.max_in_flight = min(max_in_flight, WINDOW)
        self.producer_id = random.getrandbits(62) + 1 if idempotent and acks != 0 else 0
        self.request_timeout_s = request_timeout_s
        self.delivery_timeout_s = delivery_timeout_s
        self._partitions: dict[str, int] = {}
        self._buffers: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
        self._buffer_since: dict[tuple[str, int], float] = {}
        self._callbacks: dict[tuple[str, int], list[Callback]] = {}
        self._sequences: dict[tuple[str, int], int] = {}
        self._sticky: dict[str, int] = {}
        self._in_flight: dict[int, _Request] = {}
        self._unacked: dict[tuple[str, int], deque[_Batch]] = {}
        # Partitions whose unacked batches, from one on, could not be queued (ZeroMQ's queue
        # was full): none is sent before that one; _retry_stale sends them (_send_waiting).
        self._held: set[tuple[str, int]] = set()
        # A partition's producer id, when it is not ``producer_id``: a new one starts its
        # sequences from 0 (_renumber, _expire).
        self._ids: dict[tuple[str, int], int] = {}
        # One attribute for all of it: past 30 instance attributes CPython 3.11 stops
        # specialising attribute loads, and send() got 10% slower.
        self._cl = _Cluster(bootstrap, self.conn)
        self._lock = threading.RLock()
        self._closed = False
        self._work = threading.Event()  # set while something is buffered or in flight
        self.errors: list[BrokerError] = []
        self._linger = threading.Thread(target=self._linger_loop, daemon=True, name="rail-linger")
        self._linger.start()

    @property
    def acks(self) -> int | str:
        return self._acks

    @acks.setter
    def acks(self, acks: int | str) -> None:
        """Set by its user: kept, not learned from the brokers any more."""
        if acks not in (0, 1, "all"):
            raise ValueError("acks must be 0, 1 or 'all'")
        self._acks, self._acks_unknown = acks, False

    # -- sending ----------------------------------------------------------------------
    def send(self, topic: str, value: Any, key: Any = None, headers: dict[str, Any] | None = None,
             partition: int | None = None, timestamp: int | None = None,
             callback: Callback | None = None) -> None:
        """Queue one event.  ``callback(partition, offset, error)`` runs once it is acked."""
        if key is None and headers is None and timestamp is None:
            record: tuple[Any, ...] = (value,)
        else:
            record = (value, key, headers, timestamp)
        with self._lock:
            if partition is None:
                # keyless: the topic's sticky partition, once known (saves a call per event)
                partition = self._sticky.get(topic) if key is None else None
                if partition is None:
                    partition = self._pick(topic, key)
            elif topic not in self._partitions:
                self._learn_leaders(topic)
            tp = (topic, partition)
            buf = self._buffers.get(tp)
            if buf is None:
                buf = self._buffers[tp] = []
                self._buffer_since[tp] = time.monotonic()
                if not self._work.is_set():  # Event.set takes a lock even when set
                    self._work.set()
            buf.append(record)
            if callback is not None:
                self._callbacks.setdefault(tp, []).append(callback)
            if len(buf) >= self.batch_size or not self.linger_s:
                self._ship(tp)

    def send_many(self, topic: str, values: list[Any], key: Any = None,
                  partition: int | None = None) -> None:
        """Queue many events with the same key (or none) in one call."""
        with self._lock:
            if partition is None:
                partition = self._pick(topic, key)
            elif topic not in self._partitions:
                self._learn_leaders(topic)
            tp = (topic, partition)
            records = [(v,) for v in values] if key is None else [(v, key) for v in values]
            for start in range(0, len(records), self.batch_size):
                buf = self._buffers.setdefault(tp, [])
                self._buffer_since.setdefault(tp, time.monotonic())
                self._work.set()
                buf.extend(records[start:start + self.batch_size])
                if len(buf) >= self.batch_size:
                    self._ship(tp)

    def send_records(self, topic: str, records: list[tuple[Any, Any, dict[str, Any] | None]],
                     partition: int | None = None, callback: Callback | None = None) -> None:
        """Queue many events, each ``(key, value, headers)`` (key and headers may be None),
        in one call: what ``send(topic, value, key=key, headers=headers,
        partition=partition, callback=callback)`` does for each in turn (keyed ones to
        their key's partition, keyless ones to the sticky partition; each partition's in
        list order, numbered and batched as ``send`` would), without a Python call and a
        lock a record.  Sources that hand over thousands of records with their own keys
        and headers (Connect's) spent a third of their CPU in ``send``.  One difference:
        with ``linger_ms=0`` the call's records ship together at its end, not one batch
        each."""
        if not records:
            return
        wire = [(value,) if key is None and headers is None else (value, key, headers, None)
                for key, value, headers in records]
        with self._lock:
            if partition is None:
                count = self._partitions.get(topic) or self.partitions_for(topic)
                if count > 1:
                    touched = self._spread(topic, count, wire, records, callback)
                else:
                    touched = self._extend((topic, 0), wire, callback)
            else:
                if topic not in self._partitions:
                    self._learn_leaders(topic)
                touched = self._extend((topic, partition), wire, callback)
            if not self.linger_s:
                self._ship_all([tp for tp in touched if tp in self._buffers])

    def _extend(self, tp: tuple[str, int], wire: list[tuple[Any, ...]],
                callback: Callback | None) -> list[tuple[str, int]]:
        """``send_records`` into one partition: whole slices, cut where ``send`` would
        (a batch ships once it holds ``batch_size``) (lock held)."""
        size, start, end = self.batch_size, 0, len(wire)
        while start < end:
            buf = self._buffers.get(tp)
            if buf is None:
                buf = self._buffers[tp] = []
                self._buffer_since[tp] = time.monotonic()
                if not self._work.is_set():
                    self._work.set()
            part = wire[start:start + size - len(buf)]
            buf.extend(part)
            if callback is not None:
                self._callbacks.setdefault(tp, []).extend([callback] * len(part))
            start += len(part)
            if len(buf) >= size:
                self._ship(tp)
        return [tp]

    def _spread(self, topic: str, count: int, wire: list[tuple[Any, ...]],
                records: list[tuple[Any, Any, dict[str, Any] | None]],
                callback: Callback | None) -> list[tuple[str, int]]:
        """``send_records`` over a topic's ``count`` partitions: ``send``'s choice and
        buffering, record by record, with the lookups held in locals (lock held)."""
        buffers, sticky, size, for_key = self._buffers, self._sticky, self.batch_size, \
            p.partition_for_key
        touched: set[tuple[str, int]] = set()
        for record, (key, _, _) in zip(wire, records):
            if key is None:
                part = sticky.get(topic)
                if part is None:
                    part = self._pick(topic, None)
            else:
                part = for_key(key, count)
            tp = (topic, part)
            buf = buffers.get(tp)
            if buf is None:
                buf = buffers[tp] = []
                self._buffer_since[tp] = time.monotonic()
                touched.add(tp)
                if not self._work.is_set():
                    self._work.set()
            buf.append(record)
            if callback is not None:
                self._callbacks.setdefault(tp, []).append(callback)
            if len(buf) >= size:
                self._ship(tp)
        return list(touched)

    def send_delayed(self, topic: str, value: Any, *, delay_s: float | None = None,
                     at: Any = None, key: Any = None,
                     headers: dict[str, Any] | None = None) -> str:
        """Queue ``value`` for ``topic``, delivered once after ``delay_s`` seconds or at
        ``at`` (a datetime or epoch seconds), to the partition its key picks then.  It is
        parked in ``rail.delayed`` until the supervisor's delay mover (``[supervisor]
        delays = true``) forwards it: docs/workers.md.  Returns its delay id, for
        ``cancel_delayed``.  A method of its own, so that ``send`` pays nothing for it."""
        from runtime.worker.delays import send_delayed  # the worker package imports this one
        return send_delayed(self, topic, value, key=key, headers=headers, delay_s=delay_s,
                            at=at)

    def cancel_delayed(self, delay_id: str) -> None:
        """Cancel a delayed event by the id ``send_delayed`` returned: dropped if the mover
        reads the cancel before the event falls due (docs/workers.md)."""
        from runtime.worker.delays import cancel_delayed
        cancel_delayed(self, delay_id)

    def partitions_for(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            with self._lock:
                count = self._partitions[topic] = self._lookup_partitions(topic)
        return count

    def _learn_leaders(self, topic: str) -> None:
        """A send to an explicit partition of a topic not looked up yet: given a cluster's
        endpoints, learn its leaders first, as a keyed send does (else the first broker's
        NOT_LEADER would be final); so too while the acks are to be learned."""
        if len(self._cl.bootstrap) > 1 or self._acks_unknown:
            self.partitions_for(topic)

    def _lookup_partitions(self, topic: str) -> int:
        # Given a cluster (or several endpoints), any live broker answers, not only the
        # first endpoint, which may be the one just killed.
        any_broker = len(self._cl.bootstrap) > 1 or self._cl.clustered
        try:
            meta = self._metadata([topic]) if any_broker \
                else self._call(p.Metadata(topics=[topic]))
            self._learn(meta)
            return len(meta.topics[0].partitions)
        except BrokerError as exc:
            if exc.code != "UNKNOWN_TOPIC":
                raise
        create = p.CreateTopic(topic=topic, exist_ok=True)
        if any_broker:  # (a sink's first dead letter once waited 10 s on the dead first
            # endpoint for its topic and stopped the task)
            partitions = call_any(self._cl.brokers + self._cl.bootstrap, self.conn.context,
                                  create, self.request_timeout_s, CREATE_ELSEWHERE).partitions
        else:
            partitions = self._call(create).partitions
        if (len(self._cl.bootstrap) > 1 or self._acks_unknown) and not self._cl.clustered:
            # A cluster's brokers learn of the topic from ZooKeeper a moment later: learn
            # that this is a cluster, so that the sends wait for metadata to name the
            # leaders (_refresh) instead of taking the first broker's NOT_LEADER as final,
            # and with which acks to send.
            with contextlib.suppress(BrokerError):
                self._learn(self._metadata([]))
        return int(partitions)

    def _pick(self, topic: str, key: Any) -> int:
        count = self._partitions.get(topic) or self.partitions_for(topic)
        if key is not None:
            return p.partition_for_key(key, count)
        sticky = self._sticky.get(topic)
        if sticky is None:
            sticky = self._sticky[topic] = random.randrange(count)
        return sticky

    def _ship(self, tp: tuple[str, int]) -> None:
        """Turn the buffer of ``tp`` into a batch and send it (lock held)."""
        batch = self._form(tp)
        if batch is not None:
            self._send_batches([batch])

    def _ship_all(self, tps: list[tuple[str, int]]) -> None:
        """Turn the buffers of ``tps`` into batches and send them together (lock held)."""
        formed = [batch for tp in tps if (batch := self._form(tp)) is not None]
        # A wait in _form may have sent some already (_send_waiting): never twice.
        self._send_batches([batch for batch in formed if not batch.attempts
                            and (batch.topic, batch.partition) not in self._held
                            and (batch.topic, batch.partition) not in self._cl.moved])

    def _form(self, tp: tuple[str, int]) -> _Batch | None:
        """Turn the buffer of ``tp`` into a numbered, unacked batch; return it if it may be
        sent now (lock held)."""
        records = self._buffers.pop(tp, None)
        self._buffer_since.pop(tp, None)
        if not records:
            return None
        if tp[0] in self._sticky and self._partitions.get(tp[0], 1) > 1:
            self._sticky[tp[0]] = (tp[1] + 1) % self._partitions[tp[0]]
        callbacks = self._callbacks.pop(tp, [])
        if len(self._in_flight) >= self.max_in_flight // 2:
            # Collect the acks that came meanwhile now and then, not after every send: each
            # look at the socket is a system call, right when its I/O thread wants the CPU.
            self._collect()
        # MAX_REQUESTS in flight in all, max_in_flight batches per partition: a send waits
        # for acks (what keeps a fast producer's batches full).  But a partition whose
        # oldest batch waits past STUCK_S is stuck (a paused leader, too few in-sync
        # replicas): its further batches wait in the producer (_waits) while the other
        # partitions go on, as in Kafka's accumulator, up to MAX_WAITING records.
        while (len(self._in_flight) >= MAX_REQUESTS or self._backlog(tp) >= MAX_WAITING
               or (len(self._unacked.get(tp, ())) >= self.max_in_flight
                   and not self._stuck(tp))):
            self._receive(STUCK_S)
        # Numbered only now: the wait may have given up on earlier batches and changed the
        # partition's producer id (_expire).
        seq = self._sequences.get(tp, 0)
        self._sequences[tp] = seq + len(records)
        batch = _Batch(tp[0], tp[1], records, seq if self.producer_id else -1, callbacks,
                       self._ids.get(tp, self.producer_id))
        # The delivery timeout runs from here (Kafka's, from send()): a batch that waits for
        # a leader before its first try must not look as old as the clock.
        batch.first_sent_at = time.monotonic()
        if self.acks == 0:
            conn = self._conn_for(tp) or self.conn
            if not self._transmit([batch], conn, block=True):
                self._report(batch, BrokerUnavailable(self.conn.endpoint, self.request_timeout_s))
            return None
        queue = self._unacked.setdefault(tp, deque())
        queue.append(batch)
        if tp in self._held or tp in self._cl.moved or self._waits(queue, batch, len(queue) - 1):
            return None  # sent in its turn (_send_waiting)
        return batch

    def _waits(self, queue: deque[_Batch], batch: _Batch, index: int) -> bool:
        """``batch``, at ``index`` in its partition's unacked ``queue``, waits: behind
        ``max_in_flight`` unacked batches (the broker recognises a retry only among a
        producer's last WINDOW batches of a partition), or for the first batch under its
        producer id (sequence 0) to be acked.  Were that one lost in transit and this one
        to arrive, the broker would take this one for the producer's first (it accepts any
        sequence from a producer it does not know) and answer the retry of the lost one as
        a duplicate: acknowledged, never stored."""
        return index >= self.max_in_flight or (queue[0].sequence == 0 and queue[0] is not batch)

    def _stuck(self, tp: tuple[str, int]) -> bool:
        """The oldest unacked batch of ``tp`` was sent more than STUCK_S ago."""
        queue = self._unacked.get(tp)
        if not queue:
            return False
        return 0 < queue[0].sent_at < time.monotonic() - STUCK_S

    def _backlog(self, tp: tuple[str, int]) -> int:
        """Records of ``tp`` formed into batches that wait behind max_in_flight others."""
        queue = self._unacked.get(tp)
        if not queue or len(queue) <= self.max_in_flight:
            return 0
        return sum(len(b.records) for i, b in enumerate(queue) if i >= self.max_in_flight)

    def _send_batches(self, batches: list[_Batch]) -> None:
        """Send ``batches`` (a partition's in sequence order) in as few requests as may be.
        A batch that cannot be queued holds back its partition: it and the partition's
        later batches wait (_held)."""
        held: set[tuple[str, int]] = set()
        for conn, some in self._by_leader(batches):
            for start in range(0, len(some), MAX_BATCHES):
                chunk = [b for b in some[start:start + MAX_BATCHES]
                         if (b.topic, b.partition) not in held]
                if chunk and not self._transmit(chunk, conn):
                    held.update((b.topic, b.partition) for b in chunk)
        self._held |= held

    def _by_leader(self, batches: list[_Batch]) -> list[tuple[Connection, list[_Batch]]]:
        """``batches`` grouped by the connection to their partition's leader, in order; a
        partition with no known leader waits for metadata (_moved)."""
        if not self._cl.clustered:
            return [(self.conn, batches)] if batches else []
        groups: dict[str, list[_Batch]] = {}
        for b in batches:
            tp = (b.topic, b.partition)
            leader = self._cl.leaders.get(tp)
            if leader is None or tp in self._cl.moved:
                self._cl.moved.add(tp)
                continue
            groups.setdefault(leader, []).append(b)
        return [(self._connection(endpoint), some) for endpoint, some in groups.items()]

    def _conn_for(self, tp: tuple[str, int]) -> Connection | None:
        if not self._cl.clustered:
            return self.conn
        leader = self._cl.leaders.get(tp)
        return None if leader is None else self._connection(leader)

    def _connection(self, endpoint: str) -> Connection:
        conn = self._cl.conns.get(endpoint)
        if conn is None:
            conn = self._cl.conns[endpoint] = Connection(
                endpoint, context=self.conn.context, timeout_s=self.request_timeout_s,
                watch_reconnects=self.acks != 0)
            self._cl.poller = None
        return conn

    def _transmit(self, batches: list[_Batch], conn: Connection, block: bool = False) -> bool:
        """Queue one request carrying ``batches`` on ``conn``; False if ZeroMQ's queue is
        full (the broker has been away long), at once or, with ``block``, after the request
        timeout.  Request ids come from the first connection's counter, for all of them."""
        request_id = self.conn.next_id()
        if len(batches) == 1:
            b = batches[0]
            body = _encode({
                "op": "produce", "id": request_id, "topic": b.topic, "partition": b.partition,
                "records": b.records, "acks": self.acks, "producer_id": b.producer_id,
                "sequence": b.sequence})
        else:
            pid = batches[0].producer_id
            if any(b.producer_id != pid for b in batches):  # one id per request: split
                same = [b for b in batches if b.producer_id == pid]
                rest = [b for b in batches if b.producer_id != pid]
                return self._transmit(same, conn, block) and self._transmit(rest, conn, block)
            body = _encode({
                "op": "produce_batches", "id": request_id, "acks": self.acks,
                "producer_id": pid,
                "batches": [(b.topic, b.partition, b.sequence, b.records) for b in batches]})
            if len(body) > SPLIT_BYTES:
                half = len(batches) // 2
                return (self._transmit(batches[:half], conn, block)
                        and self._transmit(batches[half:], conn, block))
        now = time.monotonic()
        for b in batches:
            if not b.first_sent_at:  # the delivery timeout runs from the first try
                b.first_sent_at = now
        if not conn.send_raw(body, block):
            return False
        for b in batches:
            b.request_id, b.sent_at = request_id, now
            b.attempts += 1
            b.in_flight = self.acks != 0
        if self.acks != 0:
            self._in_flight[request_id] = _Request(batches, len(batches), conn)
        return True

    def _land(self, batch: _Batch) -> None:
        """``batch`` no longer waits for the reply of the request it was last sent in; a
        request none of whose batches waits is forgotten (its late reply is dropped)."""
        if not batch.in_flight:
            return
        batch.in_flight = False
        request = self._in_flight.get(batch.request_id)
        if request is not None:
            request.live -= 1
            if request.live <= 0:
                del self._in_flight[batch.request_id]
                request.conn.unwatched(batch.request_id)

    def _flying(self) -> list[_Batch]:
        """The batches waiting for a reply."""
        return [b for rid, request in self._in_flight.items() for b in request.batches
                if b.in_flight and b.request_id == rid]

    # -- acknowledgements -------------------------------------------------------------
    def _collect(self) -> None:
        """Take the replies that are already here, without waiting."""
        if not self._cl.clustered:
            while self._in_flight and self.conn.readable():
                self._take(*self.conn.recv_ready())
            return
        for conn in list(self._cl.conns.values()):
            while conn.readable():
                self._take(*conn.recv_ready(), conn)

    def _receive(self, timeout_s: float) -> bool:
        """Take one reply within ``timeout_s`` (at most RECHECK_S: then look for stale or
        lost requests; callers wait in a loop)."""
        if self._cl.clustered:
            return self._receive_any(timeout_s)
        got = self.conn.recv(min(timeout_s, RECHECK_S))
        if got is None:
            self._retry_stale()
            return False
        self._take(*got)
        return True

    def _receive_any(self, timeout_s: float) -> bool:
        """``_receive`` over the connections to every broker."""
        if self._cl.poller is None:
            self._cl.poller = zmq.Poller()
            for conn in self._cl.conns.values():
                self._cl.poller.register(conn.socket, zmq.POLLIN)
        ready = dict(self._cl.poller.poll(max(0, int(min(timeout_s, RECHECK_S) * 1000))))
        if not ready:
            self._retry_stale()
            return False
        for conn in list(self._cl.conns.values()):
            if conn.socket in ready:
                while conn.readable():
                    self._take(*conn.recv_ready(), conn)
        return True

    def _take(self, request_id: int, body: bytes, conn: Connection | None = None) -> None:
        request = self._in_flight.pop(request_id, None)
        if request is None:
            (conn or self.conn).keep(request_id, body)
            return
        reply = _decode_reply(body)
        released: list[tuple[str, int]] = []  # partitions whose first batch was acked
        for i, batch in enumerate(request.batches):
            # One resent meanwhile (a later request carries it) is not answered by this one.
            if not (batch.in_flight and batch.request_id == request_id):
                continue
            batch.in_flight = False
            if isinstance(reply, p.ErrorReply):
                self._failed(batch, BrokerError(reply.code, reply.message))
            elif isinstance(reply, p.ProduceBatchesReply):
                result = reply.results[i]
                if result.error:
                    self._failed(batch, BrokerError(result.error, result.message))
                elif self._acked(batch, result.base_offset):
                    released.append((batch.topic, batch.partition))
            else:
                offsets = cast(p.ProduceReply, reply).offsets
                if self._acked(batch, offsets[0][1] if offsets else -1):
                    released.append((batch.topic, batch.partition))
        if released:
            self._send_waiting(*released)

    def _acked(self, batch: _Batch, base: int) -> bool:
        """Report ``batch`` stored at ``base``; True if later batches of its partition
        waited for it (_waits) and may go now."""
        tp = (batch.topic, batch.partition)
        queue = self._unacked.get(tp)
        released = False
        if queue and batch in queue:
            queue.remove(batch)
            released = bool(queue) and (batch.sequence == 0 or len(queue) >= self.max_in_flight)
        for i, callback in enumerate(batch.callbacks):
            callback(batch.partition, base + i if base >= 0 else -1, None)
        return released

    def _failed(self, batch: _Batch, error: BrokerError) -> None:
        tp = (batch.topic, batch.partition)
        queue = self._unacked.get(tp, deque())
        if self._cl.clustered and error.code in LEADER_MOVED and self._may_retry(batch):
            self._wait_for_leader(tp)
            return
        if error.code == "OUT_OF_ORDER_SEQUENCE" and queue and queue[0] is batch:
            self._renumber(tp)
            return
        if error.code == "OUT_OF_ORDER_SEQUENCE" or (error.code in RETRIABLE and self._may_retry(batch)):
            self._resend_from(tp)
            return
        if batch in queue:
            queue.remove(batch)
            self._send_waiting(tp)
        self._report(batch, error)

    def _report(self, batch: _Batch, error: BrokerError) -> None:
        """A batch failed for good: ``producer.errors`` (the last MAX_ERRORS) and its
        callbacks say so."""
        keep_error(self.errors, error)
        for callback in batch.callbacks:
            callback(batch.partition, -1, error)

    def _may_retry(self, batch: _Batch) -> bool:
        return time.monotonic() - batch.first_sent_at < self.delivery_timeout_s

    def _resend_from(self, tp: tuple[str, int]) -> None:
        """Resend every unacked batch of ``tp`` in order, at once (the broker drops
        duplicates)."""
        for batch in self._unacked.get(tp, ()):
            self._land(batch)
        self._send_waiting(tp)

    def _wait_for_leader(self, tp: tuple[str, int]) -> None:
        """``tp``'s batches wait, none in flight, until metadata names its leader again."""
        for batch in self._unacked.get(tp, ()):
            self._land(batch)
        self._held.discard(tp)
        self._cl.moved.add(tp)

    def _refresh(self) -> None:
        """Ask any broker for fresh metadata; partitions whose leader it names go there."""
        self._cl.refresh_at = time.monotonic() + REFRESH_S
        try:
            meta = self._metadata(sorted({topic for topic, _ in self._cl.moved}
                                         | set(self._partitions)), timeout_s=1.0)
        except BrokerError:
            return  # no broker answered: try again later
        self._learn(meta)
        ready = {tp for tp in self._cl.moved if (leader := self._cl.leaders.get(tp)) is not None
                 and not (leader in self._cl.conns and self._cl.conns[leader].is_down())}
        self._cl.moved -= ready
        self._send_waiting(*ready)

    def _metadata(self, topics: list[str], timeout_s: float | None = None) -> p.MetadataReply:
        """Metadata from the first broker that answers: the known ones, then the bootstrap
        list."""
        return metadata_from_any(self._cl.brokers + self._cl.bootstrap, self.conn.context, topics,
                                 self.request_timeout_s if timeout_s is None else timeout_s)

    def _learn(self, meta: p.MetadataReply) -> None:
        """Take the leaders a metadata reply names (a single broker names none)."""
        brokers, leaders = leaders_of(meta)
        if self._acks_unknown:
            self._acks_unknown = False
            self._acks = "all" if brokers else 1
        if brokers:
            self._cl.clustered = True
            self._cl.brokers = brokers
            self._cl.leaders.update(leaders)

    def _send_waiting(self, *tps: tuple[str, int]) -> None:
        """Send, in order, the unacked batches of ``tps`` not in flight: the ones that could
        not be queued and the ones that waited (_waits).  The ones in flight are queued
        ahead of them and are not sent again.  If one cannot be queued, it and the ones
        after it wait (_held)."""
        out: list[_Batch] = []
        for tp in tps:
            if tp in self._cl.moved:
                continue  # sent once metadata names its leader (_refresh)
            self._held.discard(tp)
            queue = self._unacked.get(tp, deque())
            for i, batch in enumerate(queue):
                if batch.in_flight:
                    continue
                if self._waits(queue, batch, i):
                    break
                out.append(batch)
        self._send_batches(out)

    def _renumber(self, tp: tuple[str, int]) -> None:
        """The broker refused the first unacked batch of ``tp`` as out of order: it lost
        batches it had acknowledged (a crash before their fsync), so resending cannot fill
        the gap.  It stored none of the unacked ones (it appends in sequence order only):
        send them again under a new producer id for ``tp``, sequences from 0."""
        self._ids[tp] = pid = random.getrandbits(62) + 1
        seq = 0
        for batch in self._unacked.get(tp, ()):
            batch.producer_id, batch.sequence = pid, seq
            seq += len(batch.records)
        self._sequences[tp] = seq
        self._resend_from(tp)

    def _retry_stale(self) -> None:
        """Resend what waited past the request timeout, or everything in flight when the
        connection to the broker was lost and made again (a restarted broker never saw it
        or lost its reply; one it did store is recognised by its sequence number)."""
        now = time.monotonic()
        if self._cl.clustered:
            self._check_leaders(now)
        back = not self._cl.clustered and self.conn.came_back()
        flying = self._flying()
        expired = {(b.topic, b.partition) for b in flying
                   if now - b.first_sent_at > self.delivery_timeout_s}
        for tp in expired | {tp for tp in self._held | self._cl.moved if self._unacked.get(tp)
                             and now - self._unacked[tp][0].first_sent_at > self.delivery_timeout_s}:
            self._expire(tp)
        stale = {(b.topic, b.partition) for b in flying
                 if back or now - b.sent_at > self.request_timeout_s}
        held = self._held - stale
        for tp in stale:
            if self._cl.clustered:  # its leader may be gone: ask metadata where it is now
                self._wait_for_leader(tp)
            else:
                self._resend_from(tp)
        for tp in held:
            self._send_waiting(tp)

    def _check_leaders(self, now: float) -> None:
        """In a cluster: the partitions whose requests went on a connection that dropped
        wait for metadata, and metadata is asked for while partitions wait for it."""
        for conn in list(self._cl.conns.values()):
            if conn.dropped():
                # Worked out before any is landed: landing forgets requests (_land).
                lost = {(b.topic, b.partition) for b in self._flying()
                        if self._in_flight[b.request_id].conn is conn}
                for tp in lost:
                    self._wait_for_leader(tp)
        if self._cl.moved and now >= self._cl.refresh_at:
            self._refresh()

    def _expire(self, tp: tuple[str, int]) -> None:
        """Give up on every unacked batch of ``tp``: the oldest waited past
        ``delivery_timeout_s`` and the later ones cannot be stored before it.

        The broker may have stored some of them.  Later batches of ``tp`` go out under a
        new producer id (sequences from 0, as after Kafka's epoch bump), so none is taken
        for a retry of a batch given up on.
        """
        error = BrokerError("UNAVAILABLE", f"no acknowledgement from {self.conn.endpoint} "
                            f"within delivery_timeout_s ({self.delivery_timeout_s:g} s): "
                            "the batch may or may not be stored")
        self._held.discard(tp)
        self._cl.moved.discard(tp)
        for batch in self._unacked.pop(tp, deque()):
            self._land(batch)
            self._report(batch, error)
        if self.producer_id:
            self._ids[tp] = random.getrandbits(62) + 1
            self._sequences.pop(tp, None)

    # -- flushing ---------------------------------------------------------------------
    def _linger_loop(self) -> None:
        """Ship batches older than ``linger_ms``; sleeps without waking while idle."""
        while not self._closed:
            self._work.wait()
            # With linger 0 every send ships at once and collects acks itself (_ship): this
            # thread only picks up the last acks, so it need not wake (and take the GIL) often.
            time.sleep(self.linger_s or 0.005)
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                self._collect()
                # While LINGER_REQUESTS requests are unanswered the broker is the bottleneck:
                # let the batches grow instead of queueing more small ones behind them (as
                # Kafka's max.in.flight does).  A full batch ships from send() regardless.
                if not self._busy(now):
                    self._ship_all([tp for tp, since in self._buffer_since.items()
                                    if now - since >= self.linger_s])
                self._collect()
                self._retry_stale()
                if not (self._buffers or self._in_flight or self._held or self._cl.moved):
                    self._work.clear()

    def _busy(self, now: float) -> bool:
        """LINGER_REQUESTS requests sent within BUSY_S are unanswered.  Older ones do not
        count: they wait on a partition that is stuck (a paused leader, too few in-sync
        replicas), and must not keep the other partitions' batches from going."""
        if len(self._in_flight) < LINGER_REQUESTS:
            return False
        young = 0
        for request in self._in_flight.values():
            if now - request.batches[0].sent_at < BUSY_S:
                young += 1
                if young >= LINGER_REQUESTS:
                    return True
        return False

    def flush(self, timeout_s: float | None = None) -> None:
        """Send everything queued and wait until the broker acknowledged it all."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.delivery_timeout_s)
        with self._lock:
            self._ship_all(list(self._buffers))
            while self._in_flight or self._held or self._cl.moved:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(self.conn.endpoint, timeout_s or self.delivery_timeout_s)
                self._receive(min(0.1, max(0.0, deadline - time.monotonic())))

    def _call(self, request: Any) -> Any:
        rid = self.conn.send(request)
        deadline = time.monotonic() + self.request_timeout_s
        while rid not in self.conn._stash:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(self.conn.endpoint, self.request_timeout_s)
            self._receive(0.05)
        return check(_decode_reply(self.conn._stash.pop(rid)))

    def close(self, timeout_s: float | None = None) -> None:
        try:
            self.flush(timeout_s)
        finally:
            with self._lock:
                self._closed = True
                self._work.set()
            self._linger.join(timeout=1)
            for conn in self._cl.conns.values():
                conn.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
