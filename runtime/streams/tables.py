"""Tables: aggregations by key, kept in a task's state store, and their windowed kind.

``group_by(key).count("name")`` (after a repartition when the key is not the input's) keeps one value per key in store ``name`` and emits
``(key, new value)`` downstream on every update.  ``.window(Tumbling(60_000))`` first keys
each record by ``(key, window start)``; a windowed table emits ``(key, {"start", "end",
"value"})`` on every update (``emit="update"``) or once when the window closes
(``emit="close"``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from runtime.streams.errors import PipelineError
from runtime.streams.sessions import SessionTable
from runtime.streams.stream import Stream
from runtime.streams.windows import Hopping, Session

if TYPE_CHECKING:
    from runtime.streams.task import Task

encode_key = msgspec.msgpack.Encoder().encode
decode_key = msgspec.msgpack.decode
_NO_INIT = object()
Emit = Literal["update", "close"]


class Aggregation:
    """``init()`` gives a key's first state, ``add(state, value)`` the next one;
    without ``init`` (reduce) the first value is the first state.  ``merge(a, b)`` joins
    two states (needed by session windows, which merge)."""

    def __init__(self, add: Callable[[Any, Any], Any], init: Callable[[], Any] | None,
                 merge: Callable[[Any, Any], Any] | None = None) -> None:
        self.add, self.init, self.merge = add, init, merge

    def step(self, state: Any, value: Any) -> Any:
        if state is None:
            return value if self.init is None else self.add(self.init(), value)
        return self.add(state, value)


class Grouped:
    """A stream grouped by its records' keys, waiting for its aggregation (or a window)."""

    def __init__(self, stream: Stream, window: Hopping | Session | None = None,
                 emit: Emit = "update") -> None:
        self.stream, self.windowing, self.emit = stream, window, emit

    def window(self, window: Hopping | Session, emit: Emit = "update") -> Grouped:
        """Aggregate per key and event-time window (emit on every update or at close)."""
        if emit not in ("update", "close"):
            raise PipelineError("emit must be 'update' or 'close'")
        return Grouped(self.stream, window, emit)

    def count(self, name: str) -> Table:
        return self.aggregate(name, lambda: 0, lambda n, _v: n + 1, merge=_plus)

    def sum(self, name: str, fn: Callable[[Any], Any] = lambda v: v) -> Table:
        return self.aggregate(name, lambda: 0, lambda total, v: total + fn(v), merge=_plus)

    def reduce(self, name: str, fn: Callable[[Any, Any], Any]) -> Table:
        """``fn(a, b)`` must be associative in session windows (it merges sessions too)."""
        return self._table(name, Aggregation(fn, None, fn))

    def aggregate(self, name: str, init: Callable[[], Any], add: Callable[[Any, Any], Any],
                  merge: Callable[[Any, Any], Any] | None = None) -> Table:
        """``merge(a, b)`` joins two states: required in session windows."""
        if isinstance(self.windowing, Session) and merge is None:
            raise PipelineError(f"aggregate {name!r} in session windows needs merge=: sessions "
                                "merge when an event bridges them")
        return self._table(name, Aggregation(add, init, merge))

    def _table(self, name: str, agg: Aggregation) -> Table:
        pipeline = self.stream.pipeline
        if name in pipeline.stores:
            raise PipelineError(f"two stores are named {name!r}: give each its own name")
        table = Table(pipeline, name, self.stream.topology)
        pipeline.stores[name] = table
        if self.windowing is None:
            self.stream.children.append(lambda task, k, v, ts: _update(task, table, agg, k, v, ts))
        elif isinstance(self.windowing, Session):
            self.stream.children.append(
                SessionTable(table, agg, self.windowing, self.emit).update)
        else:
            windowed = WindowedTable(table, agg, self.windowing, self.emit)
            self.stream.children.append(windowed.update)
        return table


def _plus(a: Any, b: Any) -> Any:
    return a + b


class Table(Stream):
    """The updates of store ``name``, as a stream (``to`` sends them on)."""

    def __init__(self, pipeline: Any, name: str, topology: int) -> None:
        super().__init__(pipeline, topology)
        self.name = name


def _update(task: Task, table: Table, agg: Aggregation, key: Any, value: Any, ts: int) -> None:
    store = task.store(table.name)
    kb = encode_key(key)
    state = agg.step(store.get(kb), value)
    store.put(kb, state)
    table.push(task, key, state, ts)


class _Live:
    """A task's windows of one store: open ones by end, closed ones by expiry, and all of
    them (a window not known is not in the store: no need to look it up)."""

    def __init__(self, table: WindowedTable, task: Task) -> None:
        self.closing: list[tuple[int, bytes]] = []
        self.expiring: list[tuple[int, bytes]] = []
        self.known: set[bytes] = set()
        w = table.window
        for skey, (_, closed) in task.store(table.table.name).items():
            self.known.add(skey)
            end = decode_key(skey)[1] + w.size_ms
            if closed:
                self.expiring.append((end + w.retention, skey))
            else:
                self.closing.append((end, skey))
        heapq.heapify(self.closing)
        heapq.heapify(self.expiring)


class WindowedTable:
    def __init__(self, table: Table, agg: Aggregation, window: Hopping, emit: Emit) -> None:
        self.table, self.agg, self.window, self.emit = table, agg, window, emit

    def update(self, task: Task, key: Any, value: Any, ts: int) -> None:
        w, name = self.window, self.table.name
        store = task.store(name)
        live = task.local(name, _Live, self, task)
        now = task.ck.stream_time
        if (live.closing and live.closing[0][0] + w.grace_ms <= now) or \
                (live.expiring and live.expiring[0][0] <= now):
            self._advance(task, live, store)
        starts = (ts - ts % w.size_ms,) if w.advance_ms == w.size_ms else w.starts(ts)
        for start in starts:
            end = start + w.size_ms
            if end + w.grace_ms <= now:
                task.ck.late += 1
                continue
            skey = encode_key([key, start])
            held = store.get(skey) if skey in live.known else None
            state = self.agg.step(None if held is None else held[0], value)
            store.put(skey, [state, False])
            if held is None:
                live.known.add(skey)
                heapq.heappush(live.closing, (end, skey))
            if self.emit == "update":
                self.table.push(task, key, {"start": start, "end": end, "value": state}, ts)

    def _advance(self, task: Task, live: _Live, store: Any) -> None:
        """Close the windows stream time has passed (grace included); forget expired ones."""
        w, now = self.window, task.ck.stream_time
        while live.closing and live.closing[0][0] + w.grace_ms <= now:
            end, skey = heapq.heappop(live.closing)
            state = store.get(skey)[0]
            store.put(skey, [state, True])
            heapq.heappush(live.expiring, (end + w.retention, skey))
            if self.emit == "close":
                key = decode_key(skey)[0]
                self.table.push(task, key, {"start": end - w.size_ms, "end": end,
                                            "value": state}, end - 1)
        while live.expiring and live.expiring[0][0] <= now:
            skey = heapq.heappop(live.expiring)[1]
            store.delete(skey)
            live.known.discard(skey)
