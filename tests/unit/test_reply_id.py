"""The client reads a reply's id from its last bytes (``runtime.connection.reply_id``):
what it reads must be what decoding the whole reply says, for every reply the broker
sends and every size of id."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from brokerd import protocol as p
from runtime.connection import _id_only, reply_id

IDS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
       2**40, 2**63 - 1, 0xA2696405, 0xA26964CC, 0x6964CD05]


def _replies(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _replies(sub)


def test_every_reply_ends_with_its_id() -> None:
    """What the fast path relies on: msgspec encodes ``id`` (keyword-only) last."""
    classes = list(_replies(p._Reply))
    assert len(classes) > 20
    assert [c.__name__ for c in classes if c.__struct_fields__[-1] != "id"] == []


@pytest.mark.parametrize("rid", IDS)
def test_the_id_read_from_the_end_is_the_decoded_one(rid: int) -> None:
    enc = msgspec.msgpack.encode
    pad = "x" * 2000
    replies = [
        p.ErrorReply(id=rid, code="BAD_REQUEST", message=pad + "ends like an id \xa2id\x05"),
        p.CommitReply(id=rid),
        p.CreateTopicReply(id=rid, topic=pad, partitions=1),
        p.CreateTopicReply(id=rid, topic="t" * 249, partitions=1),
        p.ReleaseReply(id=rid, released=[("\xa2id", 5)]),
    ]
    for reply in replies:
        body = enc(reply)
        assert reply_id(body) == _id_only.decode(body).id == rid


def test_a_body_too_short_or_not_a_reply_is_a_decode_error() -> None:
    for body in (b"", b"\xa2id", b"\xa2id\xcc", b"\xc1"):
        with pytest.raises(msgspec.DecodeError):
            reply_id(body)


def test_a_long_reply_is_read_from_its_end_unless_the_end_is_ambiguous() -> None:
    junk = b"\xc1" * 2000  # not msgpack: only reading the end gives an id
    assert reply_id(junk + b"\xa2id\x05") == 5
    assert reply_id(junk + b"\xa2id\xcd\x01\x00") == 256
    for end in (b"\xa2id\xce\xa2id\x05", b"\xa2id\xc2", b""):  # two ids, or none
        with pytest.raises(msgspec.DecodeError):
            reply_id(junk + end)
