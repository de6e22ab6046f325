"""Reading a store from outside its pipeline: from the changelog, as of the last commit of
each partition (what ``rail streams get`` and any worker use)."""

from __future__ import annotations

from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.connection import Connection
from runtime.routing import Router
from runtime.streams import changelog
from runtime.streams.errors import StreamsError

encode_key = msgspec.msgpack.Encoder().encode


def table(conn: Connection | Router, app: str, store: str) -> dict[bytes, Any]:
    """Every key of ``store`` (as msgpack bytes) with its value."""
    topics = [t for t in conn.call(p.Metadata()).topics if changelog.is_changelog_of(app, t.name)]
    if not topics:
        raise StreamsError(f"no changelog {changelog.changelog_topic(app)!r}: has application "
                           f"{app!r} run on this broker?")
    values: dict[bytes, Any] = {}
    for info in topics:
        for part in info.partitions:
            for name, key, value in changelog.read(conn, info.name, part.partition).updates:
                if name != store:
                    continue
                if value is None:
                    values.pop(key, None)
                else:
                    values[key] = msgspec.msgpack.decode(value)
    return values


def get(conn: Connection | Router, app: str, store: str, key: Any) -> Any:
    """The value of ``key`` in ``store`` of application ``app`` (None if absent); a window
    store's key is ``[key, window start]``."""
    return table(conn, app, store).get(encode_key(key))


def decoded(values: dict[bytes, Any]) -> list[tuple[Any, Any]]:
    """``table``'s items with their keys decoded (a window's ``[key, start]`` as a tuple),
    in key-bytes order."""
    return [(_hashable(msgspec.msgpack.decode(k)), v) for k, v in sorted(values.items())]


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
