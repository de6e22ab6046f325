"""A consumer-group member with a parked poll and a heartbeat thread: see ``runtime.client``.

Not thread-safe: one thread polls and commits (the heartbeat thread has its own socket).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import msgspec

from brokerd import protocol as p
from runtime.connection import (
    DEFAULT_BROKER,
    LOST_CHECK_S,
    BrokerError,
    BrokerUnavailable,
    Connection,
    keep_error,
)

class Event(msgspec.Struct):
    """One record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    value: Any
    key: Any = None
    headers: dict[str, Any] | None = None
    timestamp: int = 0


class Batch(msgspec.Struct):
    """Records of one partition in offset order, as they came off the wire (no ``Event``
    per record): ``records[i]`` is at offset ``base_offset + i``; a record whose own
    ``timestamp`` is None has the batch's ``timestamp`` (the time the broker appended it).
    ``end_offset``: the partition's end when the broker read the batch (0: not known); past
    the batch's last record, the log held more already.
    ``Consumer.poll_batches`` returns these; ``events()`` turns one into ``poll``'s events."""

    topic: str
    partition: int
    base_offset: int
    timestamp: int
    records: list[p.WireRecord]
    end_offset: int = 0

    def events(self) -> list[Event]:
        topic, part, ts = self.topic, self.partition, self.timestamp
        return [Event(topic, part, offset, r.value, r.key, r.headers,
                      ts if r.timestamp is None else r.timestamp)
                for offset, r in enumerate(self.records, self.base_offset)]


def events_of_batches(batches: list[Batch]) -> list[Event]:
    events: list[Event] = []
    for batch in batches:
        events.extend(batch.events())
    return events


_records = msgspec.msgpack.Decoder(list[p.WireRecord])


def batches_of_fetch(reply: p.FetchReply) -> list[Batch]:
    """A fetch reply's stored batches, from its ``offset`` on (a batch may start below the
    offset asked for)."""
    out: list[Batch] = []
    for base, ts, raw in reply.batches:
        records = _records.decode(raw)
        if base < reply.offset:
            records = records[reply.offset - base:]
            base = reply.offset
        if records:
            out.append(Batch(reply.topic, reply.partition, base, ts, records, reply.end_offset))
    return out


def events_of_fetch(reply: p.FetchReply) -> list[Event]:
    """A fetch reply's records as events, from its ``offset`` on."""
    return events_of_batches(batches_of_fetch(reply))


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
    more: bool = False


_poll_decoder = msgspec.msgpack.Decoder(_PollReply | p.ErrorReply)
# A parked poll streams up to this many replies (within max_bytes in all) before the
# consumer sends the next: one request per ~STREAM_REPLIES small deliveries, not per one.
STREAM_REPLIES = 1000
GATHER_REPLIES = 64  # stream replies already received that one poll() call returns together
COMMIT_WHEN_QUIET_S = 0.005  # a held async commit goes out once no event came for this long
SETTLE_EVERY_S = 0.1  # while async commits are unanswered, poll looks at their replies this often
# Errors after which a commit is sent again (after a join, an assignment or a disk that
# came back); any other error reply to an async commit goes to ``conn.async_errors``.
RETRIED = frozenset({"NOT_MEMBER", "STALE_GENERATION", "STORAGE_ERROR", "UNAVAILABLE"})


def _caught_up(reply: _PollReply) -> bool:
    """Every partition in ``reply`` was read up to its end offset when it was sent."""
    for data in reply.partitions:
        if data.batches:
            last = data.batches[-1]
            if last.base_offset + len(last.records) < data.end_offset:
                return False
    return True


def _in_cluster(broker: str, group: str, timeout_s: float) -> bool:
    """Several endpoints, or a broker that names a coordinator for ``group`` (a single
    broker names none: -1)."""
    if "," in broker.strip(", "):
        return True
    conn = Connection(broker.strip(", ") or DEFAULT_BROKER, timeout_s=timeout_s)
    try:
        reply = conn.call(p.FindCoordinator(group=group))
    except BrokerError as exc:
        if exc.code in ("NOT_COORDINATOR", "COORDINATOR_LOADING"):
            return True
        if exc.code == "UNAVAILABLE":
            raise
        return False  # e.g. an invalid group name: the join says so
    finally:
        conn.close()
    return bool(reply.coordinator >= 0)


def batches_of(data: _PartitionData, first: int) -> list[Batch]:
    """A partition's stored batches from offset ``first`` on."""
    out = []
    topic, part, end = data.topic, data.partition, data.end_offset
    for batch in data.batches:
        base, records = batch.base_offset, batch.records
        if base < first:
            records = records[first - base:]
            base = first
        if records:
            out.append(Batch(topic, part, base, batch.append_timestamp, records, end))
    return out


@dataclass
class _Hooks:
    on_assign: Callable[[list[tuple[str, int]]], None] | None
    on_revoke: Callable[[list[tuple[str, int]]], None] | None
    rebalance_timeout_ms: int


class Consumer:
    """A member of consumer group ``group`` reading ``topics``; see the module docstring.

    Given several endpoints (``"tcp://a,tcp://b"``), or one broker of a cluster, it is a
    ``runtime.cluster_consumer.ClusterConsumer``, with the same API."""

    # In a cluster a wait at the coordinator ends as soon as the connection is lost
    # (Connection's end_waits_on_drop): another broker takes over its groups at once.
    CLUSTERED = False

    def __new__(cls, broker: str = DEFAULT_BROKER, **kwargs: Any) -> Consumer:
        if cls is Consumer and _in_cluster(broker, kwargs["group"], kwargs.get("timeout_s", 10.0)):
            from runtime.cluster_consumer import ClusterConsumer
            return super().__new__(ClusterConsumer)
        return super().__new__(cls)

    def __init__(self, broker: str = DEFAULT_BROKER, *, group: str, topics: list[str],
                 member_id: str = "", start: str = "earliest", session_timeout_ms: int = 10_000,
                 client_id: str = "", max_bytes: int = 1024 * 1024,
                 on_assign: Callable[[list[tuple[str, int]]], None] | None = None,
                 timeout_s: float = 10.0, commit_interval_ms: int = 100,
                 rebalance_timeout_ms: int = 0,
                 on_revoke: Callable[[list[tuple[str, int]]], None] | None = None) -> None:
        """``rebalance_timeout_ms`` > 0: partitions that move away are handed over (the
        broker gives them to their new owner only once this member released them, or after
        that long): by default each is committed where ``positions`` says and released at
        once; with ``on_revoke``, that callback gets them and the caller commits what it
        finished of them and calls ``release`` when done (a worker draining its handlers)."""
        self.broker = broker
        self.group = group
        self.topics = list(topics)
        if start not in ("earliest", "latest"):
            raise ValueError("start must be 'earliest' or 'latest'")
        self.start: Literal["earliest", "latest"] = "latest" if start == "latest" else "earliest"
        self.session_timeout_ms = session_timeout_ms
        self.client_id = client_id
        self.max_bytes = max_bytes
        # One attribute for the three: past 30 instance attributes CPython 3.11 stops
        # specialising attribute loads (poll got slower for the Producer that way).
        self.hooks = _Hooks(on_assign, on_revoke, rebalance_timeout_ms)
        self.releasing: set[tuple[str, int]] = set()  # revoked, not released yet
        self.conn = Connection(broker, timeout_s=timeout_s, watch_reconnects=True,
                               end_waits_on_drop=self.CLUSTERED)
        self.member_id = member_id
        self.generation = -1
        self.assignment: list[tuple[str, int]] = []
        self._owned: set[tuple[str, int]] = set()
        self.positions: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}  # acknowledged by the broker
        self.commit_interval_s = commit_interval_ms / 1000
        self._pending: dict[tuple[str, int], int] = {}  # async commits not sent yet
        # The last commit sent of each partition, (request id, offset), while it is in
        # flight or acknowledged: the same offset is not sent again.  A commit that fails
        # or goes unanswered leaves here (and is sent again); a join forgets them all.
        self._sent: dict[tuple[str, int], tuple[int, int]] = {}
        # Async commits not answered yet: request id -> (when sent, offsets).
        self._inflight: dict[int, tuple[float, list[tuple[str, int, int]]]] = {}
        self._last_commit_at = float("-inf")
        self._poll_id: int | None = None
        self._poll_sent = (0.0, 0)  # when the parked poll was sent, and the drops then
        # After a seek: (offset, id of the last poll sent before it); replies to that poll
        # or an earlier one may predate the seek, so their events below offset are dropped.
        self._floors: dict[tuple[str, int], tuple[int, int]] = {}
        self._closed = threading.Event()
        # When the last join was sent, and when a heartbeat sent later than that was told
        # NOT_MEMBER (the broker restarted or expired us): then the parked poll will not
        # be answered, and poll() joins again instead of waiting out its timeout.
        self._joined_at = 0.0
        self._forgotten_at = 0.0
        self._join()
        self._heart = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                       name="rail-heartbeat")
        self._heart.start()

    def _join(self) -> None:
        self._forget_progress()
        self._joined_at = time.monotonic()
        reply = self.conn.call(p.Join(group=self.group, topics=self.topics,
                                      member_id=self.member_id, start=self.start,
                                      session_timeout_ms=self.session_timeout_ms,
                                      client_id=self.client_id,
                                      rebalance_timeout_ms=self.hooks.rebalance_timeout_ms))
        self.member_id = reply.member_id
        self._heartbeat_interval_s = reply.heartbeat_interval_ms / 1000
        # Adopted even when the generation is the one we had: a restarted broker counts
        # generations from 1 again, with another assignment maybe.
        self.generation = -1
        self._set_assignment(reply.generation, reply.assignment)

    def _forget_progress(self) -> None:
        """Before a join: the broker restarts our partitions from their committed offsets
        (protocol §9.1), so what was polled, held or sent since then comes again and is
        committed again.  Commits still unanswered are dropped: sent under the old
        incarnation, they either landed (and the broker starts from them) or did not; sent
        again now, they would land after the join and move offsets back once the events
        delivered again are committed."""
        self._settle_commits()
        for rid in self._inflight:
            self.conn.unwatched(rid)
        self._inflight.clear()
        self._sent.clear()
        self._pending.clear()
        self.positions.clear()
        self.releasing.clear()  # a join ends every hand-over of the earlier incarnation
        self._owned = set()  # and it hands over nothing: what it held was dealt anew

    def _set_assignment(self, generation: int, assignment: list[tuple[str, int]]) -> None:
        if generation == self.generation:
            return
        self.generation = generation
        new = [(topic, partition) for topic, partition in assignment]
        owned = set(new)
        gone = self._owned - owned
        self.assignment, self._owned = new, owned
        if gone and self.hooks.rebalance_timeout_ms > 0:
            self.releasing |= gone
            self._revoked(sorted(gone))
        for tp in gone - self.releasing:
            self.positions.pop(tp, None)
        if self.hooks.on_assign is not None:
            self.hooks.on_assign(list(self.assignment))

    def _revoked(self, tps: list[tuple[str, int]]) -> None:
        """Partitions handed over: the caller's ``on_revoke``, or commit where
        ``positions`` says and release them at once."""
        if self.hooks.on_revoke is not None:
            self.hooks.on_revoke(tps)
            return
        done = {tp: self.positions[tp] for tp in tps if tp in self.positions}
        try:
            if done:
                self.commit(done, sync=True)
        except BrokerError:
            pass  # not committed: the new owner gets them again from the last commit
        self.release(tps)

    def release(self, tps: list[tuple[str, int]]) -> None:
        """Done with these revoked partitions (what was finished of them is committed):
        the broker gives them to their new owner now instead of at the timeout."""
        tps = [tp for tp in tps if tp in self.releasing]
        if not tps:
            return
        self.releasing -= set(tps)
        for tp in tps:
            self.positions.pop(tp, None)
        try:
            self.conn.call(p.Release(group=self.group, member_id=self.member_id,
                                     partitions=tps))
        except BrokerError as exc:
            if exc.code not in ("NOT_MEMBER", "UNAVAILABLE", "NOT_COORDINATOR"):
                raise  # the others end with the hand-over's timeout

    def _heartbeat_loop(self) -> None:
        conn = Connection(self.broker, context=self.conn.context, timeout_s=self._heartbeat_interval_s * 2)
        try:
            while not self._closed.wait(self._heartbeat_interval_s):
                sent_at = time.monotonic()
                try:
                    conn.call(p.Heartbeat(group=self.group, member_id=self.member_id))
                except BrokerError as exc:
                    if exc.code == "NOT_MEMBER":
                        self._forgotten_at = sent_at
                    continue
        finally:
            conn.close()

    # -- polling ----------------------------------------------------------------------
    def poll(self, timeout_s: float = 1.0) -> list[Event]:
        """Return the next events of the assigned partitions (maybe none after timeout).

        One poll request is always parked at the broker, even between calls, so events
        that arrive while the caller works are on their way at once.
        """
        return events_of_batches(self.poll_batches(timeout_s))

    def poll_batches(self, timeout_s: float = 1.0) -> list[Batch]:
        """As ``poll``, but the records as they came off the wire, a ``Batch`` per stored
        batch (in each partition's offset order), without building an ``Event`` per record:
        for callers that go through many records at once.  Positions, commits and
        rebalances are the same as ``poll``'s (``poll`` is built on this)."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait_until = self._tend_commits(deadline)
            if self._poll_id is None:
                self._send_poll()
            reply = self._await_poll(max(0.0, wait_until - time.monotonic()))
            if reply is None and self._pending:
                # Nothing came for a moment: send what is held now rather than at the end
                # of the interval, so that a rebalance soon after replays less.
                self._send_pending()
            batches = [] if reply is None else self._take(reply)
            # Stream replies that are already here come along (a backlog is one batch).
            # A reply that read every partition to its end was the last one when the
            # broker sent it: looking for another would cost a system call for nothing.
            for _ in range(GATHER_REPLIES):
                if (reply is None or _caught_up(reply) or not reply.more
                        or self._poll_id is None or not self.conn.arrived(self._poll_id, 0)):
                    break
                reply = self._await_poll(0)
                if reply is not None:
                    batches.extend(self._take(reply))
            if batches:
                if self._poll_id is None:
                    self._send_poll()
                return batches
            if time.monotonic() >= deadline:
                return []

    def _tend_commits(self, deadline: float) -> float:
        """Take the answers to async commits, send the held ones that fell due; return
        until when a poll may wait: sooner than ``deadline`` while a held commit falls due
        or commits in flight need looking at."""
        if self._inflight:
            self._settle_commits()
        wait_until = deadline
        if self._pending:  # wake up for an async commit that falls due while we wait
            now = time.monotonic()
            due = self._last_commit_at + self.commit_interval_s
            if now >= due:
                self._send_pending()
            else:
                wait_until = min(deadline, due, now + COMMIT_WHEN_QUIET_S)
        if self._inflight:  # and to see that the commits in flight were accepted
            wait_until = min(wait_until, time.monotonic() + SETTLE_EVERY_S)
        return wait_until

    @property
    def _long_wait_ms(self) -> int:
        return min(5000, self.session_timeout_ms // 2)

    def _send_poll(self) -> None:
        self._poll_sent = (time.monotonic(), self.conn.drops())
        self._poll_id = self.conn.send(p.Poll(group=self.group, member_id=self.member_id,
                                              max_bytes=self.max_bytes,
                                              max_wait_ms=self._long_wait_ms,
                                              replies=STREAM_REPLIES))
        self.conn.stream(self._poll_id)

    def _await_poll(self, timeout_s: float) -> _PollReply | None:
        """The parked poll's reply if it comes within ``timeout_s``, else None (still parked,
        or lost with its connection: then the next turn polls again)."""
        rid = self._poll_id
        assert rid is not None
        sent_at, drops = self._poll_sent
        deadline = time.monotonic() + timeout_s
        # In slices: a poll whose connection dropped (the broker restarted?) can get no
        # reply.  It is sent again at once (a broker that no longer knows this member says
        # NOT_MEMBER, and it joins again) rather than at the end of the wait: a worker
        # went on 3-4 s after its broker's restart, the rest of its poll's wait.
        while not self.conn.arrived(rid, min(LOST_CHECK_S, max(0.0, deadline - time.monotonic()))):
            if self.conn.drops() != drops:
                self._end_poll(rid)
                return None
            if time.monotonic() < deadline:
                continue
            if self._forgotten_at > self._joined_at:  # this poll will not be answered
                self._end_poll(rid)
                self._join()
                return None
            overdue = time.monotonic() - sent_at - self._long_wait_ms / 1000
            if overdue > self.conn.timeout_s:
                self._end_poll(rid)
                raise BrokerUnavailable(self.conn.endpoint, self.conn.timeout_s)
            return None
        try:
            reply = self.conn.take(rid, decoder=_poll_decoder)
        except BrokerError as exc:
            self._end_poll(rid)
            if exc.code == "NOT_MEMBER":
                self._join()
                return None
            raise
        if not reply.more:
            self._end_poll(rid)
            if reply.partitions:  # the next poll goes before this one's records are
                self._send_poll()  # decoded: its reply is read (and, with CURVE,
        return reply  # encrypted and decrypted whole) meanwhile

    def _end_poll(self, rid: int) -> None:
        self._poll_id = None
        self.conn.end_stream(rid)

    def _take(self, reply: _PollReply) -> list[Batch]:
        if reply.generation > self.generation:  # a prefetched reply may predate a rebalance
            self._set_assignment(reply.generation, reply.assignment)
        owned = self._owned
        batches: list[Batch] = []
        for data in reply.partitions:
            tp = (data.topic, data.partition)
            if tp not in owned:
                continue
            first = data.offset
            floor = self._floors.get(tp)
            if floor is not None:
                if reply.id > floor[1]:  # a poll sent after the seek reads from its offset
                    del self._floors[tp]
                else:
                    first = max(first, floor[0])
            got = batches_of(data, first)
            if got:
                last = got[-1]
                self.positions[tp] = last.base_offset + len(last.records)
                batches.extend(got)
        return batches

    # -- committing -------------------------------------------------------------------
    @property
    def committed(self) -> dict[tuple[str, int], int]:
        """The offsets the broker acknowledged as committed, by (topic, partition).

        The replies to async commits are read by ``poll``, ``commit`` and ``close``."""
        return dict(self._committed)

    def commit(self, offsets: dict[tuple[str, int], int] | None = None, sync: bool = True) -> None:
        """Commit ``offsets`` (next offset to read) or everything polled so far.

        A sync commit waits for the broker (and takes along what async commits left
        pending).  An async commit goes out at once unless one went out less than
        ``commit_interval_ms`` ago; then it waits, merged with later ones, and goes out when
        that interval ends, when ``poll`` has had nothing to return for 5 ms, or at
        ``close``.  An async commit counts as done only once the broker accepted it: one
        refused (``NOT_MEMBER``, ``STALE_GENERATION``, ``STORAGE_ERROR``) or unanswered
        within ``timeout_s`` is sent again, unless a join came in between (the broker then
        delivers again from the committed offsets, and those events are committed anew).
        """
        if self._inflight:
            self._settle_commits()
        self._pending.update(self.positions if offsets is None else offsets)
        if sync:
            self._send_pending(sync=True)
        elif time.monotonic() - self._last_commit_at >= self.commit_interval_s:
            self._send_pending()

    def _send_pending(self, sync: bool = False, timeout_s: float | None = None) -> None:
        items = [(t, part, o) for (t, part), o in self._pending.items()
                 if ((t, part) in self._owned or (t, part) in self.releasing)
                 and self._sent.get((t, part), (0, -1))[1] != o]
        self._pending.clear()
        if not items:
            return
        self._last_commit_at = time.monotonic()
        if sync:
            self._commit_and_wait(items, timeout_s)
        else:
            self._inflight[self._send_commit(items)] = (self._last_commit_at, items)

    def _send_commit(self, items: list[tuple[str, int, int]]) -> int:
        try:
            rid = self.conn.send(p.Commit(group=self.group, member_id=self.member_id,
                                          generation=self.generation, offsets=items))
        except BrokerUnavailable:
            self._retry_later(items)
            raise
        for t, part, o in items:
            self._sent[(t, part)] = (rid, o)
        return rid

    def _commit_and_wait(self, items: list[tuple[str, int, int]], timeout_s: float | None) -> None:
        rid = self._send_commit(items)
        try:
            self.conn.wait(rid, timeout_s)
        except BrokerError as exc:
            if isinstance(exc, BrokerUnavailable):
                self.conn.unwatched(rid)  # its reply, if it ever comes, is not waited for
            self._failed(rid, items, exc)
            if exc.code not in ("STALE_GENERATION", "NOT_MEMBER"):
                raise
            self._refresh_assignment()  # a rebalance moved some partitions away
            items = [i for i in items if (i[0], i[1]) in self._owned]
            if not items:
                return
            rid = self._send_commit(items)
            try:
                self.conn.wait(rid, timeout_s)
            except BrokerError as again:
                self._failed(rid, items, again)
                raise
        self._accepted(items)

    def _settle_commits(self, timeout_s: float = 0.0) -> None:
        """Take the replies to async commits that came (waiting up to ``timeout_s`` for
        them), and give up on those unanswered for longer than the connection's timeout."""
        deadline = time.monotonic() + timeout_s
        for rid, (sent_at, items) in list(self._inflight.items()):
            if self.conn.arrived(rid, max(0.0, deadline - time.monotonic())):
                del self._inflight[rid]
                try:
                    self.conn.take(rid)
                except BrokerError as exc:
                    self._failed(rid, items, exc, sent_at)
                else:
                    self._accepted(items)
            elif time.monotonic() - sent_at > self.conn.timeout_s:
                del self._inflight[rid]
                self.conn.unwatched(rid)  # lost with a connection, or a broker that hangs
                self._failed(rid, items, BrokerUnavailable(self.conn.endpoint,
                                                           self.conn.timeout_s), sent_at)

    def _accepted(self, items: list[tuple[str, int, int]]) -> None:
        for t, part, o in items:
            self._committed[(t, part)] = o

    def _failed(self, rid: int, items: list[tuple[str, int, int]], exc: BrokerError,
                sent_at: float | None = None) -> None:
        """Commit ``rid`` was refused or lost: send it again, unless a later commit of the
        same partition went out since.  ``sent_at`` is given for an async commit."""
        lost = [(t, part, o) for t, part, o in items if self._sent.get((t, part), (0, 0))[0] == rid]
        for t, part, _ in lost:
            del self._sent[(t, part)]
        if exc.code not in RETRIED:
            if sent_at is not None:  # a sync commit raises it instead
                keep_error(self.conn.async_errors, exc)
            return
        if exc.code == "NOT_MEMBER" and sent_at is not None and sent_at > self._joined_at:
            self._forgotten_at = max(self._forgotten_at, sent_at)  # poll joins again
        self._retry_later(lost)

    def _retry_later(self, items: list[tuple[str, int, int]]) -> None:
        for t, part, o in items:
            self._pending.setdefault((t, part), o)  # one pending already is a later one

    def check_assignment(self) -> None:
        """Learn the current assignment now (a heartbeat) without polling for events: for
        a caller with events in hand that must see a rebalance to release partitions.  A
        broker (or coordinator) that does not answer is left for the next poll to report."""
        try:
            self._refresh_assignment()
        except BrokerError as exc:
            if exc.code not in ("UNAVAILABLE", "NOT_COORDINATOR", "COORDINATOR_LOADING"):
                raise

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
        self._floors[(topic, partition)] = (offset, self.conn.last_id)

    def close(self) -> None:
        """Send pending async commits, leave the group (its partitions move to the others at
        once) and close.  Closing again does nothing."""
        if self._closed.is_set():
            return
        deadline = time.monotonic() + 2
        try:
            self._settle_commits(timeout_s=2)  # a refused one is sent again just below
            if self._pending:
                self._send_pending(sync=True, timeout_s=max(0.1, deadline - time.monotonic()))
        except BrokerError:
            pass
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
