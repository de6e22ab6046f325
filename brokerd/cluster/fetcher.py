"""The replica fetcher: one thread that copies the partitions this broker follows.

For each followed partition it first asks the leader where the follower's last epoch ended
(``offset_for_leader_epoch``) and hands that to the loop, which truncates; then it sends
``replica_fetch`` from the follower's log end, hands each answer to the loop, which appends
it, and fetches again from the new end only once the loop says where that is.  So the
leader never counts as replicated what this broker has not written.

Thread-safety: the loop calls ``follow``, ``unfollow``, ``resume`` and ``stop``, which only
put commands on a queue and wake the thread (a pipe in its poll: a ``resume`` waiting for
the poll's timeout would cap replication at one round per timeout); the thread owns the
sockets; results go to ``on_result`` (which queues them for the loop and wakes it).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
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
    waiting: bool = False
    """A request is out, or the loop has not yet applied the last answer."""
    sent_at: float = 0.0
    retry_at: float = 0.0


class ReplicaFetcher:
    def __init__(self, broker_id: int, on_result: Callable[[tuple[Any, ...]], None],
                 context: zmq.Context,
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        self.broker_id = broker_id
        self.on_result = on_result
        self.context = context
        self.secure = secure  # with CURVE on: a client with this broker's key (docs/security.md)
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="replica-fetcher", daemon=True)
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(p.Reply).decode

    # -- the loop's side --------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def follow(self, follow: Follow) -> None:
        self._command(("follow", follow))

    def unfollow(self, tp: TP) -> None:
        self._command(("unfollow", tp))

    def resume(self, tp: TP, leader_epoch: int, offset: int, start_offset: int) -> None:
        """The loop applied the last answer: fetch ``tp`` from ``offset`` next (the log
        starts at ``start_offset`` now)."""
        self._command(("resume", tp, leader_epoch, offset, start_offset))

    def stop(self) -> None:
        self._command(("stop",))
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _command(self, command: tuple[Any, ...]) -> None:
        self._commands.put(command)
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups the thread has yet to read: it will

    # -- the thread -------------------------------------------------------------------
    def _run(self) -> None:
        follows: dict[TP, Follow] = {}
        sockets: dict[str, zmq.Socket] = {}
        pending: dict[int, tuple[TP, int, int, str]] = {}  # id -> (tp, offset, epoch, topic id)
        ids = itertools.count(1)
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while True:
                if not self._apply_commands(follows):
                    return
                now = time.monotonic()
                for f in follows.values():
                    if f.waiting and now - f.sent_at > REPLY_TIMEOUT_S + POLL_WAIT_MS / 1000:
                        f.waiting = False  # lost (or the loop is slow): ask again; the loop
                        # ignores an answer for an offset that is no longer its log's end
                    if not f.waiting and now >= f.retry_at:
                        sock = sockets.get(f.endpoint)
                        if sock is None:
                            sock = sockets[f.endpoint] = self.context.socket(zmq.DEALER)
                            sock.setsockopt(zmq.LINGER, 0)
                            if self.secure is not None:
                                self.secure(sock)
                            sock.connect(f.endpoint)
                            poller.register(sock, zmq.POLLIN)
                        rid = next(ids)
                        pending[rid] = (f.tp, f.offset, f.leader_epoch, f.topic_id)
                        sock.send(self._encode(self._request(f, rid)))
                        f.waiting, f.sent_at = True, now
                for sock, _ in poller.poll(50):
                    if sock == self._wake_r:
                        self._drain_wakeups()
                        continue
                    while sock.poll(0):
                        self._received(sock.recv(), follows, pending)
        except Exception:  # a bug here must be loud, not a silent stop
            log.exception("replica fetcher stopped")
        finally:
            for sock in sockets.values():
                sock.close(linger=0)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _apply_commands(self, follows: dict[TP, Follow]) -> bool:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            match command:
                case ("stop",):
                    return False
                case ("follow", Follow() as f):
                    follows[f.tp] = f
                case ("unfollow", tp):
                    follows.pop(tp, None)
                case ("resume", tp, epoch, offset, start):
                    known = follows.get(tp)
                    if known is not None and known.leader_epoch == epoch:
                        known.offset, known.start_offset, known.waiting = offset, start, False

    def _request(self, f: Follow, rid: int) -> p.Request:
        if f.offset < 0:
            return p.OffsetForLeaderEpoch(id=rid, topic=f.tp[0], partition=f.tp[1],
                                          epoch=f.last_epoch, leader_epoch=f.leader_epoch)
        return p.ReplicaFetch(id=rid, topic=f.tp[0], partition=f.tp[1], offset=f.offset,
                              replica_id=self.broker_id, leader_epoch=f.leader_epoch,
                              max_wait_ms=POLL_WAIT_MS, topic_id=f.topic_id,
                              start_offset=f.start_offset)

    def _received(self, body: bytes, follows: dict[TP, Follow],
                  pending: dict[int, tuple[TP, int, int, str]]) -> None:
        try:
            reply = self._decode(body)
        except msgspec.DecodeError:
            log.error("replica fetcher: an undecodable reply")
            return
        asked = pending.pop(reply.id, None)
        f = follows.get(asked[0]) if asked else None
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
                self.on_result(("fetched", tp, topic_id, epoch, offset, reply))
            case p.ErrorReply():
                f.waiting, f.retry_at = False, time.monotonic() + RETRY_S
                if reply.code != "UNKNOWN_LEADER_EPOCH":  # the leader has not caught up yet
                    log.info("replica fetch of %s[%d] from broker %d: %s: %s", *f.tp,
                             f.leader, reply.code, reply.message)
