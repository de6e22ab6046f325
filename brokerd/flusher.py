"""The flusher thread: fsyncs off the event loop, and group commit.

The loop hands the flusher one round at a time: an fsync ticket for every partition (and
the offsets store) with unsynced appends.  While a round runs, the loop keeps appending;
producers waiting for durability wait for the round that covers their append.  When a
round ends, the flusher wakes the loop through an inproc ZeroMQ socket, and the loop acks
everything the round made durable, then starts the next round if more is waiting.  So one
fsync covers every append that arrived while the previous one ran.

Thread-safety: ``submit`` is called by the loop only, ``_run`` is the thread; they share
only the queue and the inproc socket pair.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable

import zmq

log = logging.getLogger("brokerd.flusher")
WAKE_ENDPOINT = "inproc://rail-flusher"


@dataclass
class Round:
    """One round of fsyncs; ``error`` is set by the thread when one failed."""

    number: int
    jobs: list[Callable[[], None]]
    error: str | None = None


class Flusher:
    def __init__(self, context: zmq.Context) -> None:
        self.wake = context.socket(zmq.PAIR)
        self.wake.bind(WAKE_ENDPOINT + f"-{id(self)}")
        self._endpoint = WAKE_ENDPOINT + f"-{id(self)}"
        self._context = context
        self._queue: queue.Queue[Round | None] = queue.Queue()
        self._done: dict[int, Round] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="flusher", daemon=True)
        self._rounds = 0
        self.in_flight: Round | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, jobs: list[Callable[[], None]]) -> Round:
        self._rounds += 1
        rnd = Round(self._rounds, jobs)
        self.in_flight = rnd
        self._queue.put(rnd)
        return rnd

    def finished(self) -> Round | None:
        """Called by the loop when ``wake`` is readable: the round that just ended."""
        number = int(self.wake.recv())
        with self._lock:
            rnd = self._done.pop(number)
        self.in_flight = None
        return rnd

    def _run(self) -> None:
        notify = self._context.socket(zmq.PAIR)
        notify.connect(self._endpoint)
        try:
            while (rnd := self._queue.get()) is not None:
                for job in rnd.jobs:
                    try:
                        job()
                    except OSError as exc:
                        rnd.error = f"fsync failed: {os.strerror(exc.errno or 0)}"
                        log.error("%s", rnd.error)
                with self._lock:
                    self._done[rnd.number] = rnd
                notify.send(str(rnd.number).encode())
        finally:
            notify.close(linger=0)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self.wake.close(linger=0)
