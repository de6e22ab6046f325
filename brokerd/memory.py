"""The broker's memory: what it holds (RSS), and giving freed memory back to the system.

A storm of short-lived connections makes libzmq's I/O thread and the loop allocate and free
many small buffers.  glibc keeps freed memory in its heaps rather than returning it, so the
broker's RSS ratcheted up storm after storm (24, 52, 64, 72, 79 MB after four storms of
2,000 connections) with nothing in use; ``malloc_trim(0)`` brought it back to 25 MB.  The
loop calls ``Trimmer.check`` every few seconds, and it trims only when RSS has grown well
past what it was after the last trim, so a steady or idle broker does nothing.
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
    """Return freed heap memory to the system when RSS has grown by ``GROWTH_BYTES``."""

    def __init__(self, now: float) -> None:
        self._trim = _malloc_trim()
        self.floor = rss_bytes()
        self.next_check = now + CHECK_EVERY_S
        self.trims = 0

    def check(self, now: float) -> None:
        self.next_check = now + CHECK_EVERY_S
        if self._trim is None or rss_bytes() < self.floor + GROWTH_BYTES:
            return
        self._trim(0)
        self.trims += 1
        self.floor = rss_bytes()
