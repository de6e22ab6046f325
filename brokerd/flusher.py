"""The flusher thread: fsyncs off the event loop, and group commit.

The loop hands the flusher one round at a time: an fsync ticket for every partition (and
the offsets store) with unsynced appends.  While a round runs, the loop keeps appending;
producers waiting for durability wait for the round that covers their append.  When a
round ends, the flusher writes a byte to a pipe the loop watches, and the loop acks
everything the round made durable, then starts the next round if more is waiting.  So one
fsync covers every append that arrived while the previous one ran.

Thread-safety: ``submit`` and ``finished`` are called by the loop only, ``_run`` is the
thread; they share only the two queues and the pipe.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("brokerd.flusher")


@dataclass
class Round:
    """One round of fsyncs; ``error`` is set by the thread when one failed, and ``failed``
    holds the indexes of the jobs that failed."""

    number: int
    jobs: list[Callable[[], None]]
    error: str | None = None
    failed: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # each job's duration


class Flusher:
    def __init__(self) -> None:
        self.wake_fd, self._notify_fd = os.pipe()  # the loop watches wake_fd
        os.set_blocking(self.wake_fd, False)
        self._queue: queue.SimpleQueue[Round | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Round] = queue.SimpleQueue()
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

    def finished(self, wait: bool = False) -> Round | None:
        """The round that ended (None if none did yet; with ``wait``, wait for it)."""
        try:
            os.read(self.wake_fd, 64)
        except BlockingIOError:
            pass
        try:
            rnd = self._done.get(block=wait)
        except queue.Empty:
            return None
        self.in_flight = None
        return rnd

    def _run(self) -> None:
        while (rnd := self._queue.get()) is not None:
            for index, job in enumerate(rnd.jobs):
                started = time.perf_counter()
                try:
                    job()
                    rnd.seconds.append(time.perf_counter() - started)
                except OSError as exc:
                    rnd.error = f"fsync failed: {os.strerror(exc.errno or 0)}"
                    rnd.failed.append(index)
                    log.error("%s", rnd.error)
            self._done.put(rnd)
            os.write(self._notify_fd, b"!")

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        os.close(self.wake_fd)
        os.close(self._notify_fd)
