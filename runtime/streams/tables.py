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
    from runtime.consumer import Event
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
        return self.aggregate(name, lambda: 0, _count, merge=_plus)

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
            if windowed.tumbling and self.emit == "close":
                self.stream.runs[windowed.update] = windowed.run
        return table


def _plus(a: Any, b: Any) -> Any:
    return a + b


def _count(n: int, _value: Any) -> int:
    return n + 1


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
    them (a window not known is not in the store: no need to look it up).  ``due``: the
    stream time at which the next window closes or expires (checked once per event).

    Windows are grouped by the time they close (or expire) and those times kept in heaps:
    one heap operation per distinct time, not per window (with many keys, the windows of
    one period share it).  A group is handled in store-key order: the same order whatever
    the order the windows came in (a restored task rebuilds the groups from the store)."""

    def __init__(self, table: WindowedTable, task: Task) -> None:
        self.store = task.store(table.table.name)
        self.closing: dict[int, list[tuple[bytes, Any]]] = {}  # end -> [(store key, key)]
        self.close_at: list[int] = []  # heap of closing's ends
        self.expiring: dict[int, list[bytes]] = {}  # expiry -> store keys of closed windows
        self.expire_at: list[int] = []  # heap of expiring's times
        self.known: set[bytes] = set()
        self.last: dict[str, tuple[int, list[Any], bytes]] = {}  # see WindowedTable.run
        self.last_commits = 0  # the store's commit count when ``last`` was started
        w = table.window
        for skey, (_, closed) in self.store.items():
            self.known.add(skey)
            key, start = decode_key(skey)
            if closed:
                self.expire(start + w.size_ms + w.retention, [skey])
            else:
                self.close(start + w.size_ms, skey, key)
        self.due = 0
        self.set_due(w.grace_ms)

    def close(self, end: int, skey: bytes, key: Any) -> None:
        """Window ``skey`` (of ``key``) closes at ``end`` (plus grace)."""
        group = self.closing.get(end)
        if group is None:
            group = self.closing[end] = []
            heapq.heappush(self.close_at, end)
        group.append((skey, key))

    def expire(self, at: int, skeys: list[bytes]) -> None:
        """Closed windows ``skeys`` are deleted at ``at``."""
        group = self.expiring.get(at)
        if group is None:
            group = self.expiring[at] = []
            heapq.heappush(self.expire_at, at)
        group.extend(skeys)

    def set_due(self, grace_ms: int) -> None:
        close = self.close_at[0] + grace_ms if self.close_at else _NEVER
        self.due = min(close, self.expire_at[0]) if self.expire_at else close


_NEVER = 2**63


class WindowedTable:
    """A hopping (or tumbling) window aggregation: one store key ``[key, start]`` per
    window, holding ``[state, closed]``.  This runs once per event and window, so it reads
    the window's cached value and changes it in place rather than going through
    ``StateStore.get``/``put`` twice (the value is marked dirty all the same)."""

    def __init__(self, table: Table, agg: Aggregation, window: Hopping, emit: Emit) -> None:
        self.table, self.agg, self.window, self.emit = table, agg, window, emit
        self.name = table.name
        self.size, self.grace = window.size_ms, window.grace_ms
        self.tumbling = window.advance_ms == window.size_ms

    def update(self, task: Task, key: Any, value: Any, ts: int) -> None:
        live = task.local(self.name, _Live, self, task)
        ck = task.ck
        now = ck.stream_time
        if live.due <= now:
            self._advance(task, live)
        size, grace = self.size, self.grace
        if not self.tumbling:
            for start in self.window.starts(ts):
                if start + size + grace <= now:
                    ck.late += 1
                    continue
                self._add(task, live, key, value, ts, start)
            return
        start = ts - ts % size
        if start + size + grace <= now:
            ck.late += 1
            return
        # The usual case, inline: the window exists, its value is cached, no emit.
        skey = encode_key([key, start])
        held = live.store.cache.get(skey) if skey in live.known else None
        if held is None or held[0] is None or self.emit == "update":
            self._add(task, live, key, value, ts, start)
            return
        held[0] = self.agg.add(held[0], value)
        live.store.dirty.add(skey)

    def run(self, task: Task, events: list[Event], decode: Callable[[Any], Any] | None) -> None:
        """``update`` for each of a task's input events (tumbling, emit on close), in one
        loop: the windows' values change in place, as there; a new window, a closing one
        or an event that fails goes the way ``update`` and ``Task._run`` go.

        ``live.last`` remembers, per str key, its latest window (start, cached value, store
        key) changed since the last commit (so the window is dirty already): the next
        events of a key mostly fall in it.  An entry outlives its window's close, but only
        late events (dropped before the lookup) could fall in it then."""
        live = task.local(self.name, _Live, self, task)
        ck, known, add, last = task.ck, live.known, self.agg.add, live.last
        cache, dirty = live.store.cache, live.store.dirty
        if live.last_commits != live.store.commits:  # a commit took the dirty keys
            last.clear()
            live.last_commits = live.store.commits
        size, grace = self.size, self.grace
        now = ck.stream_time
        counting = add is _count  # counted inline: no call per event
        held: list[Any] | None
        for event in events:
            try:
                value = event.value if decode is None else decode(event.value)
                ts = event.timestamp
                if ts > now:
                    now = ck.stream_time = ts
                    # a window closes only as stream time moves (one added since is open)
                    if live.due <= now:
                        self._advance(task, live)
                start = ts - ts % size
                if start + size + grace <= now:
                    ck.late += 1
                    continue
                key = event.key
                if key.__class__ is str:
                    hit = last.get(key)
                    if hit is not None and hit[0] == start and hit[1][0] is not None:
                        held = hit[1]
                        held[0] = held[0] + 1 if counting else add(held[0], value)
                        continue
                skey = encode_key([key, start])
                held = cache.get(skey) if skey in known else None
                if held is None or held[0] is None:
                    self._add(task, live, key, value, ts, start, skey)
                    held = cache[skey]
                else:
                    held[0] = add(held[0], value)
                    dirty.add(skey)
                if key.__class__ is str:
                    last[key] = (start, held, skey)
            except Exception as exc:  # noqa: BLE001 - any failure of user code: dead letter
                task.dead_letter(event, exc)

    def _add(self, task: Task, live: _Live, key: Any, value: Any, ts: int, start: int,
             skey: bytes | None = None) -> None:
        """Add ``value`` to window ``start`` of ``key`` (open: not late), whose store key
        is ``skey`` (encoded here if not given)."""
        if skey is None:
            skey = encode_key([key, start])
        store = live.store
        held = (store.cache.get(skey) or store.get(skey)) if skey in live.known else None
        if held is None:
            state = self.agg.step(None, value)
            store.create(skey, [state, False])  # not known: in no store
            live.known.add(skey)
            end = start + self.size
            live.close(end, skey, key)
            live.due = min(live.due, end + self.grace)  # once per window: not hot
        else:
            state = held[0]
            state = held[0] = self.agg.step(state, value)
            store.dirty.add(skey)
        if self.emit == "update":
            self.table.push(task, key, {"start": start, "end": start + self.size,
                                        "value": state}, ts)

    def _advance(self, task: Task, live: _Live) -> None:
        """Close the windows stream time has passed (grace included); forget expired ones."""
        w, now, store = self.window, task.ck.stream_time, live.store
        close_at, expire_at, cache, dirty = live.close_at, live.expire_at, store.cache, store.dirty
        grace, retention, push = w.grace_ms, w.retention, self.table.push
        on_close = self.emit == "close"
        while close_at and close_at[0] + grace <= now:
            end = heapq.heappop(close_at)
            start = end - w.size_ms
            group = sorted(live.closing.pop(end))
            live.expire(end + retention, [skey for skey, _key in group])
            for skey, key in group:
                held = cache.get(skey) or store.get(skey)
                held[1] = True  # closed (in place, like an update)
                dirty.add(skey)
                if on_close:
                    push(task, key, {"start": start, "end": end, "value": held[0]}, end - 1)
        while expire_at and expire_at[0] <= now:
            for skey in sorted(live.expiring.pop(heapq.heappop(expire_at))):
                store.delete(skey)
                live.known.discard(skey)
        live.set_due(w.grace_ms)
