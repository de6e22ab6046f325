"""A named state store as one task sees it: a write-back cache over the task's SQLite file.

Reads go to the cache, then to SQLite; writes stay in the cache (marked dirty) until the
task commits, when they go to SQLite and to the changelog together.  The cache keeps every
key it has read (memory grows with the keys a task touches).  Not thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from runtime.streams.localstore import LocalStore

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.decode
_MISSING = object()


class StateStore:
    def __init__(self, name: str, local: LocalStore) -> None:
        self.name = name
        self.local = local
        self.cache: dict[bytes, Any] = {}  # decoded values; None: deleted
        self.dirty: set[bytes] = set()
        self.born: set[bytes] = set()  # dirty keys that were in no store before (``create``)
        self.commits = 0  # how many times ``take_updates`` emptied ``dirty``

    def get(self, key: bytes) -> Any:
        value = self.cache.get(key, _MISSING)
        if value is _MISSING:
            raw = self.local.get(self.name, key)
            value = None if raw is None else _decode(raw)
            self.cache[key] = value
        return value

    def put(self, key: bytes, value: Any) -> None:
        self.cache[key] = value
        self.dirty.add(key)

    def create(self, key: bytes, value: Any) -> None:
        """``put`` a key the caller knows is not stored (not in SQLite nor the changelog):
        if it is deleted again before the commit, the commit writes nothing for it."""
        if key not in self.dirty:
            self.born.add(key)
        self.put(key, value)

    def delete(self, key: bytes) -> None:
        self.put(key, None)

    def items(self) -> Iterator[tuple[bytes, Any]]:
        """Every key with its value (committed ones merged with those not yet committed)."""
        for key, raw in self.local.items(self.name):
            if key not in self.dirty:
                yield key, _decode(raw)
        for key in self.dirty:
            if self.cache[key] is not None:
                yield key, self.cache[key]

    def take_updates(self) -> list[tuple[str, bytes, bytes | None]]:
        """The dirty keys as (store, key, encoded value or None), in key order; clears them.
        A key created and deleted since the last commit is left out (and forgotten)."""
        cache, born = self.cache, self.born
        if born:
            for key in [k for k in born if cache[k] is None]:
                self.dirty.discard(key)
                del cache[key]  # not stored anywhere: a get finds nothing either way
            born.clear()
        updates = [(self.name, key, None if cache[key] is None else _encode(cache[key]))
                   for key in sorted(self.dirty)]
        self.dirty.clear()
        self.commits += 1
        return updates
