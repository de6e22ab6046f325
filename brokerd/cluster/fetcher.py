"""The replica fetcher: copies the partitions this broker follows, on the broker loop.

For each followed partition it first asks the leader where the follower's last epoch ended
(``offset_for_leader_epoch``) and hands that to ``on_result``, which truncates; then it
sends ``replica_fetch`` from the follower's log end, hands each answer to ``on_result``,
which appends it, and fetches again from the new end only once ``resume`` says where that
is.  So the leader never counts as replicated what this broker has not written.

It runs on the loop, not on a thread of its own: an answer is appended and the next fetch
sent in the same loop turn that read it.  (A thread cost two hand-offs per round, answer
to the loop and the loop's ``resume`` back, each a pipe write and a wake-up: the round
trip a high watermark waits for was half hand-offs; with the GIL a thread runs nothing in
parallel anyway.)  The loop polls the sockets' descriptors (``watch_with``), calls
``receive`` when one fired or ``readable`` said a reply waits, and ``tick`` at
``next_due``.  Nothing here blocks: a send the socket cannot queue is retried.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

from brokerd import protocol as p

log = logging.getLogger("brokerd.cluster")
TP = tuple[str, int]
POLL_WAIT_MS = 500
RETRY_S = 0.2
REPLY_TIMEOUT_S = 5.0
NEVER = float("inf")
SINGLE_FOR_S = 30.0  # then a leader that answered UNKNOWN_OP is asked replica_fetch_many again


@dataclass
class Follow:
    tp: TP
    leader: int
    endpoint: str
    leader_epoch: int
    last_epoch: int
    """The latest epoch in this broker's own log (what to ask the leader about)."""
    topic_id: str
    """Of the topic followed: an answer about a deleted topic of that name is not used."""
    offset: int = -1
    """Where to fetch from next; -1 until the loop has truncated."""
    start_offset: int = 0
    """This broker's start offset of the partition (the leader waits for it to move
    before it answers delete_records)."""
    high_watermark: int = -1
    epoch_entry: tuple[int, int] = (-1, -1)
    """This broker's high watermark and latest epoch entry of the partition: with them in
    a ``replica_fetch_many`` the leader need not answer an idle part at its deadline."""
    waiting: bool = False
    """A request is out, or its answer was not applied (``resume`` not called)."""
    sent_at: float = 0.0
    retry_at: float = 0.0
    rid: int = 0
    """The id of the request out (its entry in ``_pending`` goes when it is given up)."""
    busy: bool = True
    """Its last answer brought batches: fetched alone (a ``replica_fetch``), the round
    trip a high watermark waits for; an idle one waits in its leader's
    ``replica_fetch_many`` with the others."""


class ReplicaFetcher:
    def __init__(self, broker_id: int, on_result: Callable[[tuple[Any, ...]], None],
                 context: zmq.Context,
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        self.broker_id = broker_id
        self.on_result = on_result
        self.context = context
        self.secure = secure  # with CURVE on: a client with this broker's key (docs/security.md)
        self._watch: Callable[[int], None] = lambda fd: None
        self.next_due = NEVER
        """When ``tick`` has a retry or a reply timeout to look at (monotonic)."""
        self.follows: dict[TP, Follow] = {}
        self._sockets: dict[str, zmq.Socket] = {}
        self._poller = zmq.Poller()
        self._pending: dict[int, tuple[TP, int, int, str]] = {}  # id -> (tp, offset, epoch, topic id)
        self._many: dict[int, dict[TP, tuple[int, int, str]]] = {}
        """The parts of each replica_fetch_many out: id -> {tp: (offset, epoch, topic id)}."""
        self._ready: set[TP] = set()
        """Partitions to fetch in the next replica_fetch_many to their leader."""
        self._single: dict[str, float] = {}
        """Leaders that do not know replica_fetch_many (older than protocol 8), and until
        when they are asked one partition at a time: then once more with the others (one
        upgraded in a rolling upgrade, on the same endpoint, takes it)."""
        self._receiving = False
        self._ids = itertools.count(1)
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(p.Reply).decode

    def follow(self, follow: Follow) -> None:
        self.unfollow(follow.tp)  # an answer to the request of the one it replaces is stale
        self.follows[follow.tp] = follow
        self._send(follow, time.monotonic())

    def unfollow(self, tp: TP) -> None:
        gone = self.follows.pop(tp, None)
        self._ready.discard(tp)
        if gone is not None:
            self._forget(gone)

    def _forget(self, f: Follow) -> None:
        """Expect no answer for ``f`` to the request it has out (a late one is ignored)."""
        self._pending.pop(f.rid, None)
        parts = self._many.get(f.rid)
        if parts is not None:
            parts.pop(f.tp, None)
            if not parts:
                del self._many[f.rid]

    def resume(self, tp: TP, leader_epoch: int, offset: int, start_offset: int,
               delay_s: float = 0.0, high_watermark: int = -1,
               epoch_entry: tuple[int, int] = (-1, -1)) -> None:
        """The last answer is applied: fetch ``tp`` from ``offset`` now, or ``delay_s``
        from now (the log starts at ``start_offset``; what else the log holds now, for
        ``Follow``)."""
        known = self.follows.get(tp)
        if known is not None and known.leader_epoch == leader_epoch:
            known.offset, known.start_offset, known.waiting = offset, start_offset, False
            known.high_watermark, known.epoch_entry = high_watermark, epoch_entry
            now = time.monotonic()
            known.retry_at = now + delay_s
            self._send(known, now)

    def stop(self) -> None:
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        self.follows.clear()

    # -- the loop's polling -----------------------------------------------------------
    def watch_with(self, watch: Callable[[int], None]) -> None:
        """Call ``watch`` with the file descriptor of each socket: those made so far (for
        the replicas followed while the broker joined, before its loop ran) and each new
        one."""
        self._watch = watch
        for sock in self._sockets.values():
            watch(int(sock.getsockopt(zmq.FD)))

    def readable(self) -> bool:
        """An answer waits (zmq's descriptors signal only a change: a turn's sends can
        take the signal of an answer that arrived meanwhile, so the loop asks)."""
        return bool(self._sockets) and bool(self._poller.poll(0))

    def receive(self) -> None:
        """Apply every answer waiting on the sockets; then ask each leader, in one request,
        for every partition those answers let go on."""
        self._receiving = True
        try:
            for sock, _ in self._poller.poll(0):
                while True:
                    try:
                        body = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._received(body)
        finally:
            self._receiving = False
        self._flush(time.monotonic())

    def tick(self, now: float) -> None:
        """Ask again where an answer is overdue or an error's pause is over."""
        self.next_due = NEVER
        for f in list(self.follows.values()):
            if f.waiting and now - f.sent_at > REPLY_TIMEOUT_S + POLL_WAIT_MS / 1000:
                f.waiting = False  # lost (or its answer was dropped): ask again; an answer
                # for an offset that is no longer the log's end is ignored
                self._forget(f)  # a dead leader's would pile up
            if not f.waiting:
                self._send(f, now)
            self._due(f)
        self._flush(now)

    def leader_joined(self, endpoint: str) -> None:
        """A broker registered (again) at ``endpoint``: if it answered replica_fetch_many
        UNKNOWN_OP before, it may be upgraded now (a rolling upgrade): ask it again."""
        self._single.pop(endpoint, None)

    # -- requests and answers ---------------------------------------------------------
    def _asked_singly(self, endpoint: str, now: float) -> bool:
        until = self._single.get(endpoint)
        if until is None:
            return False
        if now < until:
            return True
        del self._single[endpoint]
        return False

    def _send(self, f: Follow, now: float) -> None:
        if f.waiting:
            return
        if now < f.retry_at:
            self._due(f)
            return
        if f.offset >= 0 and not f.busy and not self._asked_singly(f.endpoint, now):
            self._ready.add(f.tp)  # with the other partitions of its leader, in one request
            if not self._receiving:
                self._flush(now)
            return
        sock = self._sockets.get(f.endpoint) or self._connect(f.endpoint)
        rid = next(self._ids)
        try:
            sock.send(self._encode(self._request(f, rid)), zmq.NOBLOCK)
        except zmq.Again:  # the socket's queue is full: the leader is not reading
            f.retry_at = now + RETRY_S
            self._due(f)
            return
        self._pending[rid] = (f.tp, f.offset, f.leader_epoch, f.topic_id)
        f.waiting, f.sent_at, f.rid = True, now, rid
        self._due(f)

    def _flush(self, now: float) -> None:
        """Send one replica_fetch_many to each leader for its partitions that are ready."""
        if not self._ready:
            return
        by_leader: dict[str, list[Follow]] = {}
        for tp in self._ready:
            f = self.follows.get(tp)
            if f is not None and not f.waiting and f.offset >= 0:
                by_leader.setdefault(f.endpoint, []).append(f)
        self._ready.clear()
        for endpoint, follows in by_leader.items():
            sock = self._sockets.get(endpoint) or self._connect(endpoint)
            rid = next(self._ids)
            request = p.ReplicaFetchMany(
                id=rid, replica_id=self.broker_id, max_wait_ms=POLL_WAIT_MS,
                parts=[p.ReplicaPart(f.tp[0], f.tp[1], f.offset, f.leader_epoch, f.topic_id,
                                     f.start_offset, f.high_watermark, *f.epoch_entry)
                       for f in follows])
            try:
                sock.send(self._encode(request), zmq.NOBLOCK)
            except zmq.Again:  # the socket's queue is full: the leader is not reading
                for f in follows:
                    f.retry_at = now + RETRY_S
                    self._due(f)
                continue
            self._many[rid] = {f.tp: (f.offset, f.leader_epoch, f.topic_id) for f in follows}
            for f in follows:
                f.waiting, f.sent_at, f.rid = True, now, rid
                self._due(f)

    def _due(self, f: Follow) -> None:
        due = f.sent_at + REPLY_TIMEOUT_S + POLL_WAIT_MS / 1000 if f.waiting else f.retry_at
        if due < self.next_due:
            self.next_due = due

    def _connect(self, endpoint: str) -> zmq.Socket:
        sock = self._sockets[endpoint] = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.secure is not None:
            self.secure(sock)
        sock.connect(endpoint)
        self._poller.register(sock, zmq.POLLIN)
        self._watch(int(sock.getsockopt(zmq.FD)))
        return sock

    def _request(self, f: Follow, rid: int) -> p.Request:
        if f.offset < 0:
            return p.OffsetForLeaderEpoch(id=rid, topic=f.tp[0], partition=f.tp[1],
                                          epoch=f.last_epoch, leader_epoch=f.leader_epoch)
        return p.ReplicaFetch(id=rid, topic=f.tp[0], partition=f.tp[1], offset=f.offset,
                              replica_id=self.broker_id, leader_epoch=f.leader_epoch,
                              max_wait_ms=POLL_WAIT_MS, topic_id=f.topic_id,
                              start_offset=f.start_offset)

    def _received(self, body: bytes) -> None:
        try:
            reply = self._decode(body)
        except msgspec.DecodeError:
            log.error("replica fetcher: an undecodable reply")
            return
        if reply.id in self._many:
            self._received_many(reply)
            return
        asked = self._pending.pop(reply.id, None)
        f = self.follows.get(asked[0]) if asked else None
        if f is None or asked is None:
            return
        tp, offset, epoch, topic_id = asked  # what this answers: a late answer to an
        if (epoch, offset, topic_id) != (f.leader_epoch, f.offset, f.topic_id):  # older
            return  # request (or of a deleted topic of this name) is not for this one
        match reply:
            case p.OffsetForLeaderEpochReply():
                self.on_result(("truncate", tp, topic_id, epoch, reply.epoch,
                                reply.end_offset))
            case p.ReplicaFetchReply():
                f.busy = bool(reply.batches)
                self.on_result(("fetched", tp, topic_id, epoch, offset, reply))
            case p.ErrorReply():
                self._failed(f, reply.code, reply.message)

    def _received_many(self, reply: p.Reply) -> None:
        parts = self._many[reply.id]
        if isinstance(reply, p.ErrorReply):  # the whole request (a leader before protocol
            del self._many[reply.id]  # 8 does not know it: ask it one partition at a time)
            now = time.monotonic()
            for tp in parts:
                f = self.follows.get(tp)
                if f is None or f.rid != reply.id:
                    continue
                if reply.code == "UNKNOWN_OP":
                    if f.endpoint not in self._single:
                        log.info("the leader at %s does not know replica_fetch_many (a "
                                 "broker before protocol 8): fetching from it one partition "
                                 "at a time", f.endpoint)
                    self._single[f.endpoint] = now + SINGLE_FOR_S
                    f.waiting = False
                    self._send(f, now)
                else:
                    self._failed(f, reply.code, reply.message)
            return
        if not isinstance(reply, p.ReplicaFetchManyReply):
            return
        if not reply.more:
            del self._many[reply.id]
        for fetched in reply.fetched:
            f = self._asked_now(parts, (fetched.topic, fetched.partition))
            if f is not None:
                f.busy = bool(fetched.batches)
                self.on_result(("fetched", f.tp, f.topic_id, f.leader_epoch, f.offset,
                                fetched))
        for error in reply.errors:
            f = self._asked_now(parts, (error.topic, error.partition))
            if f is not None:
                self._failed(f, error.code, error.message)
        if not reply.more:  # a part the last reply did not name: ask again
            now = time.monotonic()
            for tp in parts:
                f = self.follows.get(tp)
                if f is not None and f.rid == reply.id:
                    f.waiting = False
                    self._send(f, now)

    def _asked_now(self, parts: dict[TP, tuple[int, int, str]], tp: TP) -> Follow | None:
        """The follow of an answered part, if the part asked for what the follow still
        wants (not an older offset or epoch, nor a deleted topic of its name)."""
        asked = parts.pop(tp, None)
        f = self.follows.get(tp)
        if asked is None or f is None or asked != (f.offset, f.leader_epoch, f.topic_id):
            return None
        return f

    def _failed(self, f: Follow, code: str, message: str) -> None:
        f.waiting, f.retry_at = False, time.monotonic() + RETRY_S
        self._due(f)
        if code != "UNKNOWN_LEADER_EPOCH":  # the leader has not caught up yet
            log.info("replica fetch of %s[%d] from broker %d: %s: %s", *f.tp, f.leader,
                     code, message)
