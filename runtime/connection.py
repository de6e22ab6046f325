"""One pipelined request/reply connection to the broker (a ZeroMQ DEALER socket).

Requests carry increasing ids; replies are matched by id, so many may be in flight.  Not
thread-safe: one thread owns a Connection (ZeroMQ sockets are single-threaded).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from typing import Any

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

from brokerd import protocol as p
from runtime.security.keys import ClientKeys

DEFAULT_BROKER = "tcp://127.0.0.1:7400"
_POLLIN, _EVENTS = int(zmq.POLLIN), int(zmq.EVENTS)  # plain ints: enums cost microseconds
_NOBLOCK = int(zmq.NOBLOCK)
_encoder = msgspec.msgpack.Encoder()
_replies = msgspec.msgpack.Decoder(p.Reply)

MAX_ERRORS = 10_000
"""Errors a client keeps for its caller to read (``Producer.errors``, ``async_errors``)."""
LOST_CHECK_S = 0.25
"""With ``end_waits_on_drop``, how often a wait looks whether the connection was lost."""


def keep_error(errors: list[BrokerError], error: BrokerError) -> None:
    """Append ``error``; past MAX_ERRORS drop the oldest half, so that a long-running
    client whose errors nobody reads does not grow without end."""
    if len(errors) >= MAX_ERRORS:
        del errors[:MAX_ERRORS // 2]
    errors.append(error)


class BrokerError(Exception):
    """The broker refused a request: ``code`` is stable, ``message`` says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class BrokerUnavailable(BrokerError):
    def __init__(self, endpoint: str, timeout_s: float, lost: bool = False) -> None:
        super().__init__("UNAVAILABLE", (
            f"the connection to the broker at {endpoint} was lost before it answered"
            if lost else f"no reply from the broker at {endpoint} within {timeout_s:g} s")
            + ": is it running (rail up, or python -m brokerd)?")


class Connection:
    def __init__(self, endpoint: str = DEFAULT_BROKER, context: zmq.Context | None = None,
                 timeout_s: float = 10.0, watch_reconnects: bool = False,
                 keys: ClientKeys | None = None, end_waits_on_drop: bool = False) -> None:
        """``keys``: CURVE keys (default: from $RAIL_CURVE_SERVER_KEY and
        $RAIL_CURVE_KEY_FILE; neither set: plaintext).  ``end_waits_on_drop`` (implies
        ``watch_reconnects``): a wait ends as soon as the connection is lost (``wait``)."""
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        keys = keys or ClientKeys.from_env()  # a bad key fails before a socket exists
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDTIMEO, max(1, int(timeout_s * 1000)))  # send(): a bound
        if keys is not None:
            keys.apply(self.socket)
        self.socket.connect(endpoint)
        self._timeout_ms = -1  # the socket's RCVTIMEO
        self._ids = itertools.count(1)
        self._last_id = 0
        self._stash: dict[int, Any] = {}
        self._streams: dict[int, deque[bytes]] = {}  # ids that get many replies, in order
        self._unwatched: set[int] = set()
        self._forgotten: set[int] = set()  # of _unwatched: dropped even when an error
        self.async_errors: list[BrokerError] = []
        # With watch_reconnects, ZeroMQ's monitor events say when the TCP connection was
        # lost and made again: requests written to the lost one will get no reply.
        self._monitor: zmq.Socket | None = None
        self._lost = self._back = self._dropped = False
        self._drops = 0  # connections lost so far: a wait's request went down with one
        self._lost_during = False  # the last wait ended as the connection was lost
        self._end_waits = end_waits_on_drop
        if watch_reconnects or end_waits_on_drop:
            self._monitor = self.socket.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)

    @property
    def last_id(self) -> int:
        """The id of the last request sent (0 before any)."""
        return self._last_id

    def send(self, request: Any) -> int:
        """Send without waiting for the reply; return the request id to ``wait`` for.

        ZeroMQ queues requests while the broker is away; if its queue is full (the broker
        has been gone long), this waits up to ``timeout_s``, then raises BrokerUnavailable.
        """
        request.id = self.next_id()
        try:
            self.socket.send(_encoder.encode(request), copy=False)
        except zmq.Again:
            raise BrokerUnavailable(self.endpoint, self.timeout_s) from None
        return request.id

    def send_raw(self, body: bytes, block: bool = False) -> bool:
        """Send a request already encoded; False if ZeroMQ's queue is full: at once, or
        with ``block`` once it stayed full for ``timeout_s``."""
        try:
            self.socket.send(body, 0 if block else _NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def next_id(self) -> int:
        self._last_id = next(self._ids)
        return self._last_id

    def recv(self, timeout_s: float | None) -> tuple[int, bytes] | None:
        """Receive one reply body (any id) or None on timeout."""
        if timeout_s is not None and timeout_s <= 0:
            return self.recv_ready() if self.readable() else None
        # A blocking recv with a receive timeout wakes up once per reply, where a poll and
        # then a recv pass through libzmq twice.  Rounded up: a 0.4 ms wait must not
        # become a busy loop of 0 ms waits.
        timeout_ms = -1 if timeout_s is None else math.ceil(timeout_s * 1000)
        if timeout_ms != self._timeout_ms:
            self.socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._timeout_ms = timeout_ms
        try:
            body = self.socket.recv(copy=False).bytes
        except zmq.Again:
            return None
        return reply_id(body), body

    def recv_ready(self) -> tuple[int, bytes]:
        """Receive one reply that ``readable`` (or a poll) said is there."""
        body = self.socket.recv(copy=False).bytes
        return reply_id(body), body

    def wait(self, request_id: int, timeout_s: float | None = None,
             decoder: msgspec.msgpack.Decoder = _replies) -> Any:
        """Wait for the reply to ``request_id``; other replies are kept for their waiters.

        With ``end_waits_on_drop``, a connection lost during the wait ends it at once (the
        request most likely went down with it): BrokerUnavailable, as after the timeout,
        without waiting that out (a coordinator stopped or killed cost a sync commit its
        whole timeout, 30 s in tests/cluster/test_rolling_restart.py)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if not self.arrived(request_id, timeout_s):
            raise BrokerUnavailable(self.endpoint, timeout_s, lost=self._lost_during)
        return self.take(request_id, decoder)

    def take(self, request_id: int, decoder: msgspec.msgpack.Decoder = _replies) -> Any:
        """The reply to ``request_id`` that ``arrived`` said is in (the next one of a stream)."""
        queue = self._streams.get(request_id)
        body = queue.popleft() if queue else self._stash.pop(request_id)
        return check(decoder.decode(body))

    def readable(self) -> bool:
        """A reply is waiting (checked without a system call when possible)."""
        return bool(self.socket.getsockopt(_EVENTS) & _POLLIN)

    def arrived(self, request_id: int, timeout_s: float) -> bool:
        """Receive until the reply to ``request_id`` is in, or ``timeout_s`` passed (or,
        with ``end_waits_on_drop``, the connection was lost meanwhile: ``_lost_during``)."""
        deadline = time.monotonic() + timeout_s
        if self._end_waits:
            self._watch()
        drops, self._lost_during = self._drops, False
        while not (self._streams.get(request_id) or request_id in self._stash):
            left = max(0.0, deadline - time.monotonic())
            if not self._end_waits:
                got = self.recv(left)
            else:  # in slices, looking at the monitor between them
                got = self.recv(min(left, LOST_CHECK_S))
                if got is None and left > LOST_CHECK_S:
                    self._watch()
                    if self._drops == drops and not self._lost:
                        continue
                    self._lost_during = True  # lost meanwhile, or down since before
            if got is None:
                return False
            self.keep(*got)
        return True

    def stream(self, request_id: int) -> None:
        """Expect many replies to ``request_id`` (a streaming poll), taken in order."""
        self._streams[request_id] = deque()

    def end_stream(self, request_id: int) -> None:
        """The last reply to ``request_id`` was taken (or nobody waits for more)."""
        self._streams.pop(request_id, None)

    def unwatched(self, request_id: int) -> None:
        """Nobody waits for this reply: drop it when it comes, keeping only an error."""
        self._unwatched.add(request_id)

    def forget(self, request_id: int) -> None:
        """Nobody will wait for this reply (the request was sent again elsewhere): drop it,
        now if it is in, else when it comes, whatever it says."""
        if self._stash.pop(request_id, None) is None:
            self._unwatched.add(request_id)
            self._forgotten.add(request_id)

    def keep(self, request_id: int, body: bytes) -> None:
        """File a reply for its waiter (or drop an unwatched one)."""
        queue = self._streams.get(request_id)
        if queue is not None:
            queue.append(body)
            return
        if request_id in self._unwatched:
            self._unwatched.discard(request_id)
            if request_id in self._forgotten:
                self._forgotten.discard(request_id)
                return
            reply = _replies.decode(body)
            if isinstance(reply, p.ErrorReply):
                keep_error(self.async_errors, BrokerError(reply.code, reply.message))
            return
        self._stash[request_id] = body

    def call(self, request: Any, timeout_s: float | None = None) -> Any:
        return self.wait(self.send(request), timeout_s)

    def came_back(self) -> bool:
        """True (once) when the connection was lost and is up again since the last call
        (only with ``watch_reconnects``)."""
        self._watch()
        back, self._back = self._back, False
        return back

    def dropped(self) -> bool:
        """True (once) when the connection was lost since the last call, whether or not it
        is up again (only with ``watch_reconnects``): requests written to it before then
        get no reply."""
        self._watch()
        dropped, self._dropped = self._dropped, False
        return dropped

    def drops(self) -> int:
        """How many times the connection was lost so far (only with ``watch_reconnects``):
        a request sent when it was lower than now was written to a lost connection, or
        queued for the one made since: it may get no reply."""
        self._watch()
        return self._drops

    def is_down(self) -> bool:
        """The connection was lost and is not up again (only with ``watch_reconnects``)."""
        self._watch()
        return self._lost

    def _watch(self) -> None:
        monitor = self._monitor
        while monitor is not None and int(monitor.getsockopt(_EVENTS)) & _POLLIN:
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self._lost = self._dropped = True
                self._drops += 1
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self._lost:
                self._lost, self._back = False, True

    def close(self) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
        self.socket.close(linger=0)


class _Id(msgspec.Struct):
    id: int = 0


_id_only = msgspec.msgpack.Decoder(_Id)


_ID = b"\xa2id"  # the key "id" in msgpack
# How an id may end a reply: (bytes of the value after its type byte, the type byte).
_ID_FORMS = ((1, 0xCC), (2, 0xCD), (4, 0xCE), (8, 0xCF))
PEEK_FROM = 1024  # smaller replies are decoded whole: as fast as reading their end


def reply_id(body: bytes) -> int:
    """The ``id`` of a reply.  The broker encodes every reply as a map whose last entry is
    ``id`` (``_Reply.id`` is keyword-only: msgspec puts it after the subclass's fields),
    so a long reply's last bytes say it: a poll reply is up to megabytes, and decoding it
    for its id, then again for its records, cost 4% of a streams pipeline's time.  Where
    the end could be read as two different ids (the bytes of a long id can look like a
    short one's key and value), or as none, the reply is decoded whole."""
    if len(body) < PEEK_FROM:
        return _id_only.decode(body).id
    found = [body[-1]] if body[-4:-1] == _ID and body[-1] < 0x80 else []
    for size, kind in _ID_FORMS:
        if body[-size - 1] == kind and body[-size - 4:-size - 1] == _ID:
            found.append(int.from_bytes(body[-size:], "big"))
    if len(found) == 1:
        return found[0]
    return _id_only.decode(body).id


def check(reply: Any) -> Any:
    """Raise BrokerError for an error reply, else return it."""
    if isinstance(reply, p.ErrorReply):
        raise BrokerError(reply.code, reply.message)
    return reply
