"""Rail's Python client: ``Producer`` and ``Consumer``.

    from runtime.client import Producer, Consumer

    with Producer("tcp://127.0.0.1:7400") as producer:
        producer.send("orders", {"pizza": 2}, key="table-7")

    with Consumer("tcp://127.0.0.1:7400", group="kitchen", topics=["orders"]) as consumer:
        for event in consumer.poll(timeout_s=1.0):
            print(event.offset, event.value)
        consumer.commit()

The producer batches records per partition (up to ``batch_size`` records or ``linger_ms``),
keeps several batches in flight, and is idempotent by default: every batch carries a
producer id and sequence number, so a batch retried after a timeout or a broker restart is
never written twice.  The consumer is a group member: the broker assigns it partitions and
remembers its position; ``commit`` makes progress durable.  Each object is used from one
thread (the producer has its own lock for its linger thread).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import msgspec

from brokerd import protocol as p
from runtime.connection import DEFAULT_BROKER, BrokerError, BrokerUnavailable, Connection, check

__all__ = ["Producer", "Consumer", "Event", "BrokerError", "BrokerUnavailable", "DEFAULT_BROKER"]

_encode = msgspec.msgpack.Encoder().encode
RETRIABLE = {"STORAGE_ERROR", "UNAVAILABLE", "SHUTTING_DOWN"}
WINDOW = p.IDEMPOTENCE_WINDOW  # batches per partition the broker recognises retries among
Callback = Callable[[int, int, "BrokerError | None"], None]


@dataclass
class _Batch:
    topic: str
    partition: int
    records: list[tuple[Any, ...]]
    sequence: int
    callbacks: list[Callback] = field(default_factory=list)
    body: bytes = b""
    request_id: int = 0
    sent_at: float = 0.0
    attempts: int = 0


class Producer:
    """Send events to topics; see the module docstring.  ``acks``: 0, 1 or "all"."""

    def __init__(self, broker: str = DEFAULT_BROKER, *, acks: int | str = 1,
                 batch_size: int = 1000, linger_ms: float = 5.0, max_in_flight: int = 16,
                 idempotent: bool = True, request_timeout_s: float = 10.0,
                 delivery_timeout_s: float = 120.0) -> None:
        if acks not in (0, 1, "all"):
            raise ValueError("acks must be 0, 1 or 'all'")
        self.conn = Connection(broker, timeout_s=request_timeout_s)
        self.acks = acks
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
        self._in_flight: dict[int, _Batch] = {}
        self._unacked: dict[tuple[str, int], deque[_Batch]] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._work = threading.Event()  # set while something is buffered or in flight
        self.errors: list[BrokerError] = []
        self._linger = threading.Thread(target=self._linger_loop, daemon=True, name="rail-linger")
        self._linger.start()

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
                partition = self._pick(topic, key)
            tp = (topic, partition)
            buf = self._buffers.get(tp)
            if buf is None:
                buf = self._buffers[tp] = []
                self._buffer_since[tp] = time.monotonic()
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
            tp = (topic, partition)
            records = [(v,) for v in values] if key is None else [(v, key) for v in values]
            for start in range(0, len(records), self.batch_size):
                buf = self._buffers.setdefault(tp, [])
                self._buffer_since.setdefault(tp, time.monotonic())
                self._work.set()
                buf.extend(records[start:start + self.batch_size])
                if len(buf) >= self.batch_size:
                    self._ship(tp)

    def partitions_for(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            with self._lock:
                count = self._partitions[topic] = self._lookup_partitions(topic)
        return count

    def _lookup_partitions(self, topic: str) -> int:
        try:
            meta = self._call(p.Metadata(topics=[topic]))
            return len(meta.topics[0].partitions)
        except BrokerError as exc:
            if exc.code != "UNKNOWN_TOPIC":
                raise
        return self._call(p.CreateTopic(topic=topic, exist_ok=True)).partitions

    def _pick(self, topic: str, key: Any) -> int:
        count = self._partitions.get(topic) or self.partitions_for(topic)
        if key is not None:
            return p.partition_for_key(key, count)
        sticky = self._sticky.get(topic)
        if sticky is None:
            sticky = self._sticky[topic] = random.randrange(count)
        return sticky

    def _ship(self, tp: tuple[str, int]) -> None:
        """Turn the buffer of ``tp`` into an in-flight batch (lock held)."""
        records = self._buffers.pop(tp, None)
        self._buffer_since.pop(tp, None)
        if not records:
            return
        if tp[0] in self._sticky and self._partitions.get(tp[0], 1) > 1:
            self._sticky[tp[0]] = (tp[1] + 1) % self._partitions[tp[0]]
        seq = self._sequences.get(tp, 0)
        self._sequences[tp] = seq + len(records)
        batch = _Batch(tp[0], tp[1], records, seq if self.producer_id else -1,
                       self._callbacks.pop(tp, []))
        # At most WINDOW batches in flight per partition: the broker recognises a retry only
        # among a producer's last WINDOW batches of a partition.
        while len(self._unacked.get(tp, ())) >= self.max_in_flight:
            self._receive(self.request_timeout_s)
        while self._in_flight and self.conn.readable():
            self._receive(0)
        self._transmit(batch)
        if self.acks != 0:
            self._unacked.setdefault(tp, deque()).append(batch)

    def _transmit(self, batch: _Batch) -> None:
        batch.request_id = self.conn.next_id()
        batch.attempts += 1
        batch.sent_at = time.monotonic()
        self.conn.send_raw(_encode({
            "op": "produce", "id": batch.request_id, "topic": batch.topic,
            "partition": batch.partition, "records": batch.records, "acks": self.acks,
            "producer_id": self.producer_id, "sequence": batch.sequence,
        }))
        if self.acks != 0:
            self._in_flight[batch.request_id] = batch

    # -- acknowledgements -------------------------------------------------------------
    def _receive(self, timeout_s: float) -> bool:
        got = self.conn.recv(timeout_s)
        if got is None:
            self._retry_stale()
            return False
        request_id, body = got
        batch = self._in_flight.pop(request_id, None)
        if batch is None:
            self.conn.keep(request_id, body)
            return True
        reply = msgspec.msgpack.decode(body, type=p.Reply)
        if isinstance(reply, p.ErrorReply):
            self._failed(batch, BrokerError(reply.code, reply.message))
        else:
            self._acked(batch, reply)
        return True

    def _acked(self, batch: _Batch, reply: p.ProduceReply) -> None:
        queue = self._unacked.get((batch.topic, batch.partition))
        if queue and batch in queue:
            queue.remove(batch)
        base = reply.offsets[0][1] if reply.offsets else -1
        for i, callback in enumerate(batch.callbacks):
            callback(batch.partition, base + i if base >= 0 else -1, None)

    def _failed(self, batch: _Batch, error: BrokerError) -> None:
        tp = (batch.topic, batch.partition)
        queue = self._unacked.get(tp, deque())
        if error.code == "OUT_OF_ORDER_SEQUENCE" or (error.code in RETRIABLE and self._may_retry(batch)):
            self._resend_from(tp)
            return
        if batch in queue:
            queue.remove(batch)
        self.errors.append(error)
        for callback in batch.callbacks:
            callback(batch.partition, -1, error)

    def _may_retry(self, batch: _Batch) -> bool:
        return time.monotonic() - batch.sent_at < self.delivery_timeout_s

    def _resend_from(self, tp: tuple[str, int]) -> None:
        """Resend every unacked batch of ``tp`` in order (the broker drops duplicates)."""
        for batch in self._unacked.get(tp, ()):
            if self._in_flight.pop(batch.request_id, None) is not None:
                self.conn.unwatched(batch.request_id)  # its late reply is dropped on arrival
            self._transmit(batch)

    def _retry_stale(self) -> None:
        now = time.monotonic()
        stale = {(b.topic, b.partition) for b in self._in_flight.values()
                 if now - b.sent_at > self.request_timeout_s}
        for tp in stale:
            self._resend_from(tp)

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
                for tp, since in list(self._buffer_since.items()):
                    if now - since >= self.linger_s:
                        self._ship(tp)
                while self._in_flight and self._receive(0):
                    pass
                if not self._buffers and not self._in_flight:
                    self._work.clear()

    def flush(self, timeout_s: float | None = None) -> None:
        """Send everything queued and wait until the broker acknowledged it all."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.delivery_timeout_s)
        with self._lock:
            for tp in list(self._buffers):
                self._ship(tp)
            while self._in_flight:
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
        return check(msgspec.msgpack.decode(self.conn._stash.pop(rid), type=p.Reply))

    def close(self, timeout_s: float | None = None) -> None:
        try:
            self.flush(timeout_s)
        finally:
            with self._lock:
                self._closed = True
                self._work.set()
            self._linger.join(timeout=1)
            self.conn.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- consuming ------------------------------------------------------------------------
class Event(msgspec.Struct):
    """One record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    value: Any
    key: Any = None
    headers: dict[str, Any] | None = None
    timestamp: int = 0


class _Batch3(msgspec.Struct, array_like=True):
    base_offset: int
    append_timestamp: int
    records: list[p.WireRecord]


class _PartitionData(msgspec.Struct):
    topic: str
    partition: int
    offset: int
    end_offset: int
    batches: list[_Batch3]


class _PollReply(msgspec.Struct, tag_field="op", tag="poll"):
    generation: int
    assignment: list[tuple[str, int]]
    partitions: list[_PartitionData]
    id: int = 0


_poll_decoder = msgspec.msgpack.Decoder(_PollReply | p.ErrorReply)


def events_of(data: _PartitionData) -> list[Event]:
    """Flatten a partition's batches into events, skipping records before ``offset``."""
    out = []
    topic, part, first = data.topic, data.partition, data.offset
    for batch in data.batches:
        offset = batch.base_offset
        for r in batch.records:
            if offset >= first:
                out.append(Event(topic, part, offset, r.value, r.key, r.headers,
                                 batch.append_timestamp if r.timestamp is None else r.timestamp))
            offset += 1
    return out


class Consumer:
    """A member of consumer group ``group`` reading ``topics``; see the module docstring."""

    def __init__(self, broker: str = DEFAULT_BROKER, *, group: str, topics: list[str],
                 member_id: str = "", start: str = "earliest", session_timeout_ms: int = 10_000,
                 client_id: str = "", max_bytes: int = 1024 * 1024,
                 on_assign: Callable[[list[tuple[str, int]]], None] | None = None,
                 timeout_s: float = 10.0) -> None:
        self.broker = broker
        self.group = group
        self.topics = list(topics)
        if start not in ("earliest", "latest"):
            raise ValueError("start must be 'earliest' or 'latest'")
        self.start: Literal["earliest", "latest"] = "latest" if start == "latest" else "earliest"
        self.session_timeout_ms = session_timeout_ms
        self.client_id = client_id
        self.max_bytes = max_bytes
        self.on_assign = on_assign
        self.conn = Connection(broker, timeout_s=timeout_s)
        self.member_id = member_id
        self.generation = -1
        self.assignment: list[tuple[str, int]] = []
        self.positions: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._poll_id: int | None = None
        self._poll_sent_at = 0.0
        self._floors: dict[tuple[str, int], int] = {}  # after a seek: drop events below
        self._closed = threading.Event()
        self._heartbeat_ok = threading.Event()
        self._join()
        self._heart = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                       name="rail-heartbeat")
        self._heart.start()

    def _join(self) -> None:
        reply = self.conn.call(p.Join(group=self.group, topics=self.topics,
                                      member_id=self.member_id, start=self.start,
                                      session_timeout_ms=self.session_timeout_ms,
                                      client_id=self.client_id))
        self.member_id = reply.member_id
        self._heartbeat_interval_s = reply.heartbeat_interval_ms / 1000
        self._set_assignment(reply.generation, reply.assignment)

    def _set_assignment(self, generation: int, assignment: list[tuple[str, int]]) -> None:
        if generation == self.generation:
            return
        self.generation = generation
        new = [(topic, partition) for topic, partition in assignment]
        for tp in set(self.assignment) - set(new):
            self.positions.pop(tp, None)
        self.assignment = new
        if self.on_assign is not None:
            self.on_assign(list(self.assignment))

    def _heartbeat_loop(self) -> None:
        conn = Connection(self.broker, context=self.conn.context, timeout_s=self._heartbeat_interval_s * 2)
        try:
            while not self._closed.wait(self._heartbeat_interval_s):
                try:
                    conn.call(p.Heartbeat(group=self.group, member_id=self.member_id))
                except BrokerError:
                    continue
        finally:
            conn.close()

    # -- polling ----------------------------------------------------------------------
    def poll(self, timeout_s: float = 1.0) -> list[Event]:
        """Return the next events of the assigned partitions (maybe none after timeout).

        One poll request is always parked at the broker, even between calls, so events
        that arrive while the caller works are on their way at once.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            if self._poll_id is None:
                self._send_poll()
            reply = self._await_poll(max(0.0, deadline - time.monotonic()))
            events = [] if reply is None else self._take(reply)
            if events:
                self._send_poll()
                return events
            if time.monotonic() >= deadline:
                return []

    @property
    def _long_wait_ms(self) -> int:
        return min(5000, self.session_timeout_ms // 2)

    def _send_poll(self) -> None:
        self._poll_sent_at = time.monotonic()
        self._poll_id = self.conn.send(p.Poll(group=self.group, member_id=self.member_id,
                                              max_bytes=self.max_bytes,
                                              max_wait_ms=self._long_wait_ms))

    def _await_poll(self, timeout_s: float) -> _PollReply | None:
        """The parked poll's reply if it comes within ``timeout_s``, else None (still parked)."""
        rid = self._poll_id
        assert rid is not None
        if not self.conn.arrived(rid, timeout_s):
            overdue = time.monotonic() - self._poll_sent_at - self._long_wait_ms / 1000
            if overdue > self.conn.timeout_s:
                self._poll_id = None
                raise BrokerUnavailable(self.conn.endpoint, self.conn.timeout_s)
            return None
        self._poll_id = None
        try:
            return self.conn.wait(rid, 0, decoder=_poll_decoder)
        except BrokerError as exc:
            if exc.code == "NOT_MEMBER":
                self._join()
                return None
            raise

    def _take(self, reply: _PollReply) -> list[Event]:
        if reply.generation >= self.generation:  # a prefetched reply may predate a rebalance
            self._set_assignment(reply.generation, reply.assignment)
        owned = set(self.assignment)
        events: list[Event] = []
        for data in reply.partitions:
            tp = (data.topic, data.partition)
            if tp not in owned:
                continue
            got = events_of(data)
            floor = self._floors.pop(tp, None)
            if floor is not None:
                got = [e for e in got if e.offset >= floor]
            if got:
                self.positions[tp] = got[-1].offset + 1
                events.extend(got)
        return events

    # -- committing -------------------------------------------------------------------
    def commit(self, offsets: dict[tuple[str, int], int] | None = None, sync: bool = True) -> None:
        """Commit ``offsets`` (next offset to read) or everything polled so far."""
        todo = dict(self.positions if offsets is None else offsets)
        items = [(t, part, o) for (t, part), o in todo.items()
                 if self._committed.get((t, part)) != o and (t, part) in set(self.assignment)]
        if not items:
            return
        rid = self.conn.send(p.Commit(group=self.group, member_id=self.member_id,
                                      generation=self.generation, offsets=items))
        if not sync:
            self.conn.unwatched(rid)
        else:
            try:
                self.conn.wait(rid)
            except BrokerError as exc:
                if exc.code not in ("STALE_GENERATION", "NOT_MEMBER"):
                    raise
                self._refresh_assignment()  # a rebalance moved some partitions away
                owned = set(self.assignment)
                items = [i for i in items if (i[0], i[1]) in owned]
                if items:
                    self.conn.call(p.Commit(group=self.group, member_id=self.member_id,
                                            generation=self.generation, offsets=items))
        for t, part, o in items:
            self._committed[(t, part)] = o

    def _refresh_assignment(self) -> None:
        try:
            reply = self.conn.call(p.Heartbeat(group=self.group, member_id=self.member_id))
        except BrokerError as exc:
            if exc.code != "NOT_MEMBER":
                raise
            self._join()
            return
        self._set_assignment(reply.generation, reply.assignment)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read ``topic[partition]`` from ``offset`` next (it must be assigned to us).

        A reply already on its way may still carry events from before the seek: those
        below ``offset`` are dropped; after a seek backwards, some may come twice.
        """
        self.conn.call(p.Seek(group=self.group, member_id=self.member_id, topic=topic,
                              partition=partition, offset=offset))
        self.positions[(topic, partition)] = offset
        self._floors[(topic, partition)] = offset

    def close(self) -> None:
        """Leave the group (its partitions move to the others at once) and close."""
        self._closed.set()
        self._heart.join(timeout=2)
        try:
            self.conn.call(p.Leave(group=self.group, member_id=self.member_id), timeout_s=2)
        except BrokerError:
            pass
        self.conn.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
