"""The broker's memory: what it holds (RSS), and giving freed memory back to the system.

A storm of short-lived connections makes libzmq's I/O thread and the loop allocate and free
many small buffers.  glibc keeps freed memory in its heaps rather than returning it, so the
broker's RSS ratcheted up storm after storm (24, 52, 64, 72, 79 MB after four storms of
2,000 connections) with nothing in use; ``malloc_trim(0)`` brought it back to 25 MB.  The
loop calls ``Trimmer.check`` every few seconds, and it trims when RSS has grown well past
what it was after the last trim, so a steady or idle broker does nothing.

A trim that comes in the middle of a storm gives little back (the buffers are still in
use), and RSS then stays where the storm left it without growing any further: judged only
by growth since that trim, the memory freed once the storm ended was never given back (the
storm test failed now and then, at 62 MB against a 29 MB baseline).  So while RSS stays well
above the lowest it has been after a trim, the trimmer tries again, at intervals that
double each time a trim gives back less than ``GROWTH_BYTES`` (memory really in use, such
as 10,000 partitions' indexes, is tried ever less often, at most every ``RETRY_MAX_S``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Callable

log = logging.getLogger("brokerd")
CHECK_EVERY_S = 5.0
GROWTH_BYTES = 4 * 1024 * 1024
RETRY_MAX_S = 300.0


def rss_bytes() -> int:
    """The resident set size of this process (0 where /proc cannot tell)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class Trimmer:
    """Return freed heap memory to the system when RSS has grown by ``GROWTH_BYTES`` since
    the last trim, and again (backing off) while it stays that far above its lowest."""

    def __init__(self, now: float, rss: Callable[[], int] = rss_bytes,
                 trim: Callable[[int], int] | None = None) -> None:
        self._rss = rss
        self._trim = trim if trim is not None else _malloc_trim()
        self.floor = self.low = rss()
        self.next_check = now + CHECK_EVERY_S
        self._retry_s = CHECK_EVERY_S
        self._retry_at = now
        self.trims = 0

    def check(self, now: float) -> None:
        self.next_check = now + CHECK_EVERY_S
        if self._trim is None:
            return
        before = self._rss()
        grown = before >= self.floor + GROWTH_BYTES
        if not grown and (before < self.low + GROWTH_BYTES or now < self._retry_at):
            return
        self._trim(0)
        self.trims += 1
        self.floor = after = self._rss()
        self.low = min(self.low, after)
        if grown or before - after >= GROWTH_BYTES:
            self._retry_s = CHECK_EVERY_S  # it paid: look again soon
        else:
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        self._retry_at = now + self._retry_s
