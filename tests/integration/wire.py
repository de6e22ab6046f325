"""A raw DEALER client for integration tests: send any frames, read replies as plain dicts.

The Python client in ``runtime.client`` only ever sends well-formed requests; these tests
also need to send garbage and to see the broker's replies exactly as they travel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import zmq

from brokerd import protocol as p

_encode = msgspec.msgpack.Encoder().encode


class RawClient:
    """One DEALER socket to the broker's API; used from one thread."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self._next_id = 1

    def send_frames(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames, copy=len(frames[-1]) > 65536 if frames else True)

    def recv_reply(self, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """The next reply as a dict (REQ-shaped replies lose their empty delimiter)."""
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        frames = self.socket.recv_multipart()
        if len(frames) == 2 and frames[0] == b"":
            frames = frames[1:]
        assert len(frames) == 1, f"a reply has one body frame, got {len(frames)}"
        reply = msgspec.msgpack.decode(frames[0])
        assert isinstance(reply, dict), f"a reply is a map, got {reply!r}"
        return reply

    def call(self, op: str, timeout_s: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send ``{"op": op, "id": <fresh>, **fields}`` and return its reply."""
        request_id = self._next_id
        self._next_id += 1
        self.send_frames([_encode({"op": op, "id": request_id, **fields})])
        reply = self.recv_reply(timeout_s)
        assert reply is not None, f"no reply to {op} within {timeout_s} s"
        assert reply.get("id") == request_id, f"reply {reply!r} is not for request {request_id}"
        return reply

    def ok(self, op: str, **fields: Any) -> dict[str, Any]:
        reply = self.call(op, **fields)
        assert reply["op"] == op, f"{op} failed: {reply!r}"
        return reply

    def error_code(self, op: str, **fields: Any) -> str:
        """Send a request that must fail; check the error's shape; return its code."""
        reply = self.call(op, **fields)
        assert_clear_error(reply)
        return str(reply["code"])

    def close(self) -> None:
        self.socket.close(linger=0)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assert_clear_error(reply: dict[str, Any]) -> None:
    """An error reply: op "error", a known stable code, and a message a person can read."""
    assert reply.get("op") == "error", f"expected an error reply, got {reply!r}"
    assert reply.get("code") in p.ERROR_CODES, f"unknown error code in {reply!r}"
    message = reply.get("message")
    assert isinstance(message, str) and message.strip(), f"error without a message: {reply!r}"


def read_partition(client: RawClient, topic: str, partition: int,
                   max_bytes: int = 4 * 1024 * 1024) -> Iterator[tuple[int, list[Any]]]:
    """Every stored record of a partition as ``(offset, [value, key, headers, ts])``.

    Checks on the way that batches follow each other without a gap in offsets.
    """
    end = client.ok("list_offsets", topic=topic, partition=partition,
                    timestamp=p.LATEST)["offset"]
    offset = 0
    while offset < end:
        reply = client.ok("fetch", topic=topic, partition=partition, offset=offset,
                          max_bytes=max_bytes)
        assert reply["batches"], f"{topic}[{partition}] returned nothing at {offset} < {end}"
        for base, _append_ts, records in reply["batches"]:
            assert base <= offset, f"batch at {base} skips offsets from {offset}"
            for i, record in enumerate(records):
                if base + i >= offset:
                    assert base + i == offset
                    yield offset, list(record) + [None] * (4 - len(record))
                    offset += 1
