"""Event-time windows: which windows an event falls in, and when a window closes.

A window ``[start, end)`` closes once the task's stream time (the highest event timestamp
it has seen, in milliseconds) reaches ``end + grace_ms``; an event for a closed window is
late and dropped (counted).  A closed window stays in the store, readable, until stream
time reaches ``end + retention_ms``, then it is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.streams.errors import PipelineError


@dataclass(frozen=True)
class Hopping:
    """Windows of ``size_ms`` starting every ``advance_ms`` (an event is in size/advance of them)."""

    size_ms: int
    advance_ms: int
    grace_ms: int = 0
    retention_ms: int | None = None

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or not 0 < self.advance_ms <= self.size_ms:
            raise PipelineError("a window needs size_ms > 0 and 0 < advance_ms <= size_ms")
        if self.grace_ms < 0 or self.retention < self.grace_ms:
            raise PipelineError("grace_ms must be >= 0 and retention_ms >= grace_ms")

    @property
    def retention(self) -> int:
        return self.size_ms + self.grace_ms if self.retention_ms is None else self.retention_ms

    def starts(self, ts: int) -> range:
        """The starts of the windows holding ``ts``, oldest first."""
        low = ts - self.size_ms + 1  # the first start that still holds ts, if aligned
        first = max(low + (-low) % self.advance_ms, 0)
        return range(first, ts - ts % self.advance_ms + 1, self.advance_ms)


def Tumbling(size_ms: int, grace_ms: int = 0, retention_ms: int | None = None) -> Hopping:
    """Back-to-back windows of ``size_ms``: each event is in exactly one."""
    return Hopping(size_ms, size_ms, grace_ms, retention_ms)


@dataclass(frozen=True)
class Session:
    """Per key, events closer than ``gap_ms`` to each other form one session ``[first,
    last]``; an event that bridges two open sessions merges them.  A session closes when
    stream time reaches ``last + gap_ms + grace_ms`` (no event can extend it then); an event
    whose own session would already be closed is late.  Closed sessions are final."""

    gap_ms: int
    grace_ms: int = 0
    retention_ms: int | None = None

    def __post_init__(self) -> None:
        if self.gap_ms <= 0 or self.grace_ms < 0 or self.retention < self.gap_ms + self.grace_ms:
            raise PipelineError("a session window needs gap_ms > 0, grace_ms >= 0 and "
                                "retention_ms >= gap_ms + grace_ms")

    @property
    def retention(self) -> int:
        """How long after its last event a session stays in the store."""
        return self.gap_ms + self.grace_ms if self.retention_ms is None else self.retention_ms
