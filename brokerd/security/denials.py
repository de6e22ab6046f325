"""Denied requests: every one counted (``stats.counts.acl_denied``), each distinct
(principal, op, resource) logged at most once a minute, so a client retrying a forbidden
write in a loop cannot flood the log."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("brokerd.security")
LOG_EVERY_S = 60.0
REMEMBERED = 10_000  # distinct denials remembered for the once-a-minute rule


class Denials:
    def __init__(self) -> None:
        self._logged: dict[tuple[str, str, str], float] = {}
        self.suppressed = 0

    def denied(self, principal: str, op: str, resource: str, now: float | None = None) -> bool:
        """Record one denial; True if it was logged (not seen in the last minute)."""
        now = time.monotonic() if now is None else now
        key = (principal, op, resource)
        last = self._logged.get(key)
        if last is not None and now - last < LOG_EVERY_S:
            self.suppressed += 1
            return False
        if len(self._logged) >= REMEMBERED:
            self._forget(now)
        self._logged[key] = now
        log.warning("denied: principal %r may not %s %s", principal, op, resource)
        return True

    def _forget(self, now: float) -> None:
        self._logged = {k: t for k, t in self._logged.items() if now - t < LOG_EVERY_S}
        if len(self._logged) >= REMEMBERED:  # a minute of distinct denials: start over
            self._logged.clear()
