"""Concurrency within a partition, order kept per key: what the worker host runs when a
worker has ``concurrency > 1``.

Events of one partition are split into lanes by key: a lane's events run one at a time in
offset order, different lanes run side by side, at most ``limit`` at once.  Events without a
key each get a lane of their own (no order among them, as with any task queue).  The offset
committed for a partition is the lowest one not finished yet (``watermarks``), so a crash
never skips an unfinished event; what comes again after a crash is only what was not
committed.

``Lanes`` is the bookkeeping, pure and single-threaded (the host's main thread owns it);
``Runner`` runs the handler calls on ``limit`` daemon threads (sync handlers) or as tasks of
one event loop on a thread of its own (async handlers), and hands each outcome back through
a queue the main thread drains.
"""

from __future__ import annotations

import asyncio
import heapq
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from runtime.client import Event

Key = tuple[str, int, int]
MAX_KEY_TIMES = 10_000  # per-key rate state kept; past it, keys idle long enough are dropped


class Track:
    """One partition's dispatched offsets, in order, and which of them are finished."""

    __slots__ = ("done", "moved", "next", "order")

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.done: set[int] = set()
        self.next = -1  # one past the highest offset taken
        self.moved = False  # the watermark moved since the last commit

    def watermark(self) -> int:
        order, done = self.order, self.done
        while order and order[0] in done:
            done.discard(order.popleft())
        return order[0] if order else self.next


class Lanes:
    """Which event may start next (see the module docstring); ``start`` is called for each
    event allowed to run, with the slot it runs in."""

    def __init__(self, limit: int, start: Callable[[Event, int], None]) -> None:
        self.limit = limit
        self.start = start
        self.tracks: dict[tuple[str, int], Track] = {}
        self.lanes: dict[Any, deque[Event]] = {}  # lane -> events waiting behind its head
        self.ready: deque[Event] = deque()  # lane heads waiting for a free slot
        self.free = list(range(limit - 1, -1, -1))
        self.running: dict[int, Event] = {}  # slot -> event
        self.owner: dict[int, Track] = {}  # slot -> the track its event counts in
        self.pending = 0  # taken and not finished: running, ready or waiting in a lane
        self.suspects: set[Key] = set()  # run alone (runtime.worker.quarantine)
        self.quarantined: set[Key] = set()  # finished without running
        self.skipped: list[Event] = []  # quarantined events met since the host last looked
        self.alone = False  # a suspect runs: nothing else starts
        self.paused = False  # draining: nothing new starts
        # a rate per key: a lane's next event starts key_interval after its previous one; a
        # head that must wait sits in ``later`` (due, seq, event) and the other lanes go on
        self.key_interval = 0.0
        self.key_next: dict[Any, float] = {}  # lane -> when its next event may start
        self.later: list[tuple[float, int, Event]] = []
        self._seq = 0

    def add(self, events: list[Event]) -> int:
        """Take ``events``; return how many were new (one seen before is dropped: a rebalance
        or a re-join delivers again from the committed offset what is taken already)."""
        taken = 0
        for event in events:
            tp = (event.topic, event.partition)
            track = self.tracks.get(tp)
            if track is None:
                track = self.tracks[tp] = Track()
            elif event.offset < track.next:
                continue
            track.order.append(event.offset)
            track.next = event.offset + 1
            if self.quarantined and (event.topic, event.partition, event.offset) in self.quarantined:
                track.done.add(event.offset)  # in the DLQ already: finished, not run
                track.moved = True
                self.skipped.append(event)
                continue
            taken += 1
            lane = lane_of(event)
            if lane is None:
                self.ready.append(event)
            elif lane in self.lanes:
                self.lanes[lane].append(event)
            else:
                self.lanes[lane] = deque()
                self.ready.append(event)
        self.pending += taken
        self.fill()
        return taken

    def finished(self, slot: int) -> Event:
        """The event in ``slot`` is done (handled or dead-lettered): free the slot, let its
        lane's next event go."""
        event = self.running.pop(slot)
        self.free.append(slot)
        self.pending -= 1
        track = self.owner.pop(slot)  # a track forgotten since (a rebalance) is not committed
        track.done.add(event.offset)
        track.moved = True
        if self.alone and not self.running:
            self.alone = False
        lane = lane_of(event)
        if lane is not None:
            waiting = self.lanes.get(lane)
            if waiting:
                self.ready.append(waiting.popleft())
            else:
                self.lanes.pop(lane, None)
        self.fill()
        return event

    def fill(self) -> None:
        while self.ready and self.free and not self.alone and not self.paused:
            event = self.ready[0]
            if self.key_interval and not self._key_may_start(event):
                continue
            if self.suspects and (event.topic, event.partition, event.offset) in self.suspects:
                if self.running:
                    return  # a suspect waits until it can run alone
                self.alone = True
            self.ready.popleft()
            slot = self.free.pop()
            self.running[slot] = event
            self.owner[slot] = self.tracks[(event.topic, event.partition)]
            self.start(event, slot)

    def _key_may_start(self, event: Event) -> bool:
        """Per-key rate: True (and the lane's next slot taken) if ``event`` may start now;
        else it moves from ``ready`` to ``later``, due at its lane's next slot."""
        lane = lane_of(event)
        if lane is None:
            return True
        now = time.monotonic()
        due = self.key_next.get(lane)
        if due is not None and due > now:
            self.ready.popleft()
            self._seq += 1
            heapq.heappush(self.later, (due, self._seq, event))
            return False
        # released a moment after its slot: count from the slot (no drift); idle: from now
        start = due if due is not None and now - due < self.key_interval else now
        self.key_next[lane] = start + self.key_interval
        if len(self.key_next) > MAX_KEY_TIMES:
            self.key_next = {k: t for k, t in self.key_next.items() if t > now}
        return True

    def release(self) -> float | None:
        """Move the waiting heads whose slot came to ``ready`` and start what may start;
        return when the next one falls due (monotonic), if any waits."""
        now = time.monotonic()
        while self.later and self.later[0][0] <= now:
            self.ready.append(heapq.heappop(self.later)[2])
        self.fill()
        return self.later[0][0] if self.later else None

    def watermarks(self, all_: bool = False) -> dict[tuple[str, int], int]:
        """The next offset to commit per partition whose watermark moved (every partition
        with ``all_``)."""
        out = {}
        for tp, track in self.tracks.items():
            if track.moved or all_:
                track.moved = False
                out[tp] = track.watermark()
        return out

    def watermark_of(self, tp: tuple[str, int]) -> int | None:
        """One partition's next offset to commit (None: nothing taken of it)."""
        track = self.tracks.get(tp)
        return None if track is None else track.watermark()

    def forget(self, owned: set[tuple[str, int]],
               keep: set[tuple[str, int]] | frozenset[tuple[str, int]] = frozenset()) -> None:
        """Drop what is queued of partitions no longer ``owned`` (a rebalance moved them),
        and their tracks: their next owner (maybe us again) starts from the committed offset.
        Running events finish; their outcome is committed by nobody.  The tracks of the
        partitions in ``keep`` stay (being handed over: their running events finish and
        are committed first; what was dropped stays unfinished, below the watermark)."""
        gone = {tp for tp in self.tracks if tp not in owned}
        if not gone:
            return
        kept = deque(e for e in self.ready if (e.topic, e.partition) not in gone)
        dropped = len(self.ready) - len(kept)
        self.ready = kept
        later = [h for h in self.later if (h[2].topic, h[2].partition) not in gone]
        dropped += len(self.later) - len(later)
        self.later = later
        heapq.heapify(self.later)
        for lane in list(self.lanes):
            if lane[0] in gone:
                dropped += len(self.lanes[lane])
                if not any(lane_of(e) == lane for e in self.running.values()):
                    del self.lanes[lane]
                else:
                    self.lanes[lane].clear()
        self.pending -= dropped
        for tp in gone - set(keep):
            del self.tracks[tp]


def lane_of(event: Event) -> Any:
    """Events of one partition with the same key share a lane; no key, no lane."""
    key = event.key
    if key is None:
        return None
    try:
        hash(key)
    except TypeError:
        key = repr(key)
    return ((event.topic, event.partition), key)


Outcome = tuple[int, BaseException | None]  # slot, the handler's last error (None: handled)


class Runner:
    """Runs handler calls for ``Lanes``; outcomes go to ``outcomes``."""

    def __init__(self, limit: int, attempt: Callable[[Event], BaseException | None] | None,
                 attempt_async: Callable[[Event], Coroutine[Any, Any, BaseException | None]] | None,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self.outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.attempt = attempt
        self.attempt_async = attempt_async
        self.loop = loop
        self.work: queue.SimpleQueue[tuple[int, Event] | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        if loop is not None:
            self.threads.append(threading.Thread(target=loop.run_forever, daemon=True,
                                                 name="rail-handlers"))
        else:
            self.threads += [threading.Thread(target=self._serve, daemon=True,
                                              name=f"rail-handler-{i}") for i in range(limit)]
        for thread in self.threads:
            thread.start()

    def run(self, event: Event, slot: int) -> None:
        if self.loop is not None:
            assert self.attempt_async is not None
            future = asyncio.run_coroutine_threadsafe(self.attempt_async(event), self.loop)
            future.add_done_callback(lambda f: self.outcomes.put((slot, _outcome(f))))
        else:
            self.work.put((slot, event))

    def _serve(self) -> None:
        assert self.attempt is not None
        while True:
            item = self.work.get()
            if item is None:
                return
            slot, event = item
            try:
                error = self.attempt(event)
            except BaseException as exc:  # noqa: BLE001 - a SystemExit in a handler thread
                error = exc
            self.outcomes.put((slot, error))

    def close(self) -> None:
        """Let idle threads end (busy ones are daemons: they do not hold the exit up)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.threads[0].join(timeout=1)
        else:
            for _ in self.threads:
                self.work.put(None)


def _outcome(future: Any) -> BaseException | None:
    if future.cancelled():
        return asyncio.CancelledError()
    exc = future.exception()
    return exc if exc is not None else future.result()
