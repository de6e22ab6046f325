"""Session windows in a task's store: key ``[key, first]`` → ``[state, closed, last]``.

Open sessions of each key are also kept in memory (rebuilt from the store on first use),
with two heaps: when each may close, when each closed one expires.  A heap entry whose
session was merged or extended since is stale and skipped.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.streams.windows import Session

if TYPE_CHECKING:
    from runtime.streams.state import StateStore
    from runtime.streams.tables import Aggregation, Emit, Table
    from runtime.streams.task import Task

encode_key = msgspec.msgpack.Encoder().encode
decode_key = msgspec.msgpack.decode


class _Open:
    def __init__(self, sessions: SessionTable, store: StateStore) -> None:
        self.by_key: dict[bytes, list[tuple[int, int]]] = {}  # key -> open (first, last)
        self.closing: list[tuple[int, bytes]] = []
        self.expiring: list[tuple[int, bytes]] = []
        w = sessions.window
        for skey, (_, closed, last) in store.items():
            if closed:
                self.expiring.append((last + w.retention, skey))
                continue
            key, first = decode_key(skey)
            self.by_key.setdefault(encode_key(key), []).append((first, last))
            self.closing.append((last + w.gap_ms + w.grace_ms, skey))
        heapq.heapify(self.closing)
        heapq.heapify(self.expiring)


class SessionTable:
    def __init__(self, table: Table, agg: Aggregation, window: Session, emit: Emit) -> None:
        self.table, self.agg, self.window, self.emit = table, agg, window, emit

    def update(self, task: Task, key: Any, value: Any, ts: int) -> None:
        w, store = self.window, task.store(self.table.name)
        live = task.local(self.table.name, _Open, self, store)
        now = task.ck.stream_time
        self._advance(task, live, store, now)
        if ts + w.gap_ms + w.grace_ms <= now:
            task.ck.late += 1
            return
        kb = encode_key(key)
        sessions = live.by_key.setdefault(kb, [])
        near = [s for s in sessions if s[0] - w.gap_ms <= ts <= s[1] + w.gap_ms]
        state, first, last = None, ts, ts
        for old_first, old_last in sorted(near):
            held = store.get(encode_key([key, old_first]))[0]
            state = held if state is None else self.agg.merge(state, held)  # type: ignore[misc]
            first, last = min(first, old_first), max(last, old_last)
            store.delete(encode_key([key, old_first]))
            sessions.remove((old_first, old_last))
        state = self.agg.step(state, value)
        skey = encode_key([key, first])
        store.put(skey, [state, False, last])
        sessions.append((first, last))
        heapq.heappush(live.closing, (last + w.gap_ms + w.grace_ms, skey))
        if self.emit == "update":
            self.table.push(task, key, {"start": first, "end": last, "value": state}, ts)

    def _advance(self, task: Task, live: _Open, store: StateStore, now: int) -> None:
        w = self.window
        while live.closing and live.closing[0][0] <= now:
            due, skey = heapq.heappop(live.closing)
            held = store.get(skey)
            if held is None or held[1] or held[2] + w.gap_ms + w.grace_ms != due:
                continue  # merged away, or extended: a later entry stands for it
            state, _, last = held
            store.put(skey, [state, True, last])
            k, first = decode_key(skey)
            live.by_key[encode_key(k)].remove((first, last))
            heapq.heappush(live.expiring, (last + w.retention, skey))
            if self.emit == "close":
                self.table.push(task, k, {"start": first, "end": last, "value": state},
                                last + w.gap_ms - 1)
        while live.expiring and live.expiring[0][0] <= now:
            store.delete(heapq.heappop(live.expiring)[1])
