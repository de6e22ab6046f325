"""The supervisor's control socket: ``rail status/register/unregister/scale/restart/down``.

A ZeroMQ ROUTER (default ``tcp://127.0.0.1:7402``) served by the supervisor's loop; clients
use a DEALER.  One msgpack frame each way: a request tagged by ``op``, a ``ControlReply``.
Neither class is thread-safe.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import zmq

from runtime.config import DEFAULT_CONTROL


class _Request(msgspec.Struct, tag_field="op", kw_only=True):
    pass


class Status(_Request, tag="status"):
    pass


class Register(_Request, tag="register"):
    name: str
    script: str
    topics: list[str]
    group: str = ""
    replicas: int = 1
    policy: str = "permanent"


class Unregister(_Request, tag="unregister"):
    name: str


class Scale(_Request, tag="scale"):
    name: str
    replicas: int


class Restart(_Request, tag="restart"):
    name: str


class Down(_Request, tag="down"):
    pass


Request = Status | Register | Unregister | Scale | Restart | Down


class ControlReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    error: str = ""
    result: Any = None


class ControlError(Exception):
    """The supervisor refused a request, or is not there; the message says what to do."""


_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(Request)
_replies = msgspec.msgpack.Decoder(ControlReply)


def default_endpoint() -> str:
    return os.environ.get("RAIL_CONTROL") or DEFAULT_CONTROL


class ControlServer:
    """The supervisor's end: bind, receive typed requests, send replies."""

    def __init__(self, endpoint: str, context: zmq.Context) -> None:
        self.endpoint = endpoint
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)

    def receive(self) -> tuple[list[bytes], Request | None, str]:
        """One request: (route, decoded request or None, decode error)."""
        frames = self.socket.recv_multipart()
        route, body = frames[:-1], frames[-1]
        try:
            return route, _requests.decode(body), ""
        except msgspec.DecodeError as exc:
            return route, None, f"bad control request: {exc}"

    def reply(self, route: list[bytes], reply: ControlReply) -> None:
        self.socket.send_multipart([*route, _encoder.encode(reply)])

    def close(self) -> None:
        self.socket.close(linger=0)


def call(endpoint: str, request: Request, timeout_s: float = 5.0) -> Any:
    """Send one request to the supervisor at ``endpoint``; return its result or raise
    ControlError with a one-line message."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(_encoder.encode(request))
        if not sock.poll(int(timeout_s * 1000)):
            raise ControlError(f"no supervisor at {endpoint}: start one with rail up "
                               "(or pass --control / set RAIL_CONTROL)")
        reply = _replies.decode(sock.recv())
    except zmq.ZMQError as exc:
        raise ControlError(f"cannot reach {endpoint}: {exc}: check --control") from None
    finally:
        sock.close(linger=0)
    if not reply.ok:
        raise ControlError(reply.error)
    return reply.result
