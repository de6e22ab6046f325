"""Rate limits: ``rate = "100/s"`` for a worker, shared evenly by its replicas (each host
gets ``--rate`` = its share in events per second).

A host asks ``take()`` before each handler call; it returns at once while the host is within
its rate and otherwise sleeps until the next event may start (GCRA: one theoretical arrival
time, no busy waiting, and a late wake-up does not carry over into the next wait).  Events
are never dropped: the ones not started yet stay in the log, and the lag shows it.
"""

from __future__ import annotations

import re
import time

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_SLEEP_S = 0.25  # a stop is seen at least this often while waiting


def per_second(rate: str) -> float:
    """``"100/s"``, ``"600/m"``, ``"10/h"`` as events per second; ValueError if malformed."""
    match = _RATE.match(rate)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"rate {rate!r}: write it as N/s, N/m or N/h with N > 0")
    return float(match.group(1)) / UNITS[match.group(2)]


class RateLimit:
    def __init__(self, per_s: float, stopping: object) -> None:
        self.interval = 1.0 / per_s
        self.next = time.monotonic()
        self.stopping = stopping  # an object with a ``stopping`` attribute (the host)

    def take(self) -> bool:
        """Wait for the next slot; False if the host began to stop meanwhile."""
        now = time.monotonic()
        start = max(self.next, now)
        while start > now:
            if getattr(self.stopping, "stopping", False):
                return False
            time.sleep(min(MAX_SLEEP_S, start - now))
            now = time.monotonic()
        self.next = start + self.interval
        return True
