"""Supervision policy, after Erlang/OTP: when to restart, how long to wait, when to give up,
and when a live process counts as hung.

Pure classes with an explicit ``now`` (monotonic seconds): tested without processes.  None
of them is thread-safe; the supervisor's single loop owns them.
"""

from __future__ import annotations

from typing import Any

from brokerd.protocol import EXIT_CONFIG, EXIT_OK

POLICIES = ("permanent", "transient", "temporary")


class RestartPolicy:
    """``permanent`` always restarts, ``transient`` only after an abnormal exit,
    ``temporary`` never.  Nobody restarts a process that exited with EXIT_CONFIG: it would
    only fail again."""

    def __init__(self, kind: str = "permanent") -> None:
        if kind not in POLICIES:
            raise ValueError(f"unknown restart policy {kind!r}: use one of {', '.join(POLICIES)}")
        self.kind = kind

    def should_restart(self, exit_code: int) -> bool:
        if exit_code == EXIT_CONFIG:
            return False
        if self.kind == "permanent":
            return True
        if self.kind == "transient":
            return exit_code != EXIT_OK
        return False


class Backoff:
    """Exponential restart delay: ``initial_s``, doubled per consecutive crash, capped at
    ``max_s``; a run that lasted ``stable_s`` or more resets it."""

    def __init__(self, initial_s: float = 0.1, max_s: float = 10.0, stable_s: float = 10.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.stable_s = stable_s
        self.attempt = 0
        self._started_at: float | None = None

    def started(self, now: float) -> None:
        self._started_at = now

    def next_delay(self, now: float) -> float:
        """The delay before the next start, given that the process exited at ``now``."""
        if self._started_at is not None and now - self._started_at >= self.stable_s:
            self.attempt = 0
        delay = min(self.max_s, self.initial_s * (2 ** self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class Intensity:
    """Restart intensity: more than ``max_restarts`` restarts within ``within_s`` seconds
    means the process is flapping and is marked failed instead of restarted again."""

    def __init__(self, max_restarts: int = 5, within_s: float = 60.0) -> None:
        self.max_restarts = max_restarts
        self.within_s = within_s
        self._times: list[float] = []

    def record(self, now: float) -> bool:
        """Count one restart at ``now``; True if that exceeds the limit (give up)."""
        self._times = [t for t in self._times if now - t < self.within_s]
        self._times.append(now)
        return len(self._times) > self.max_restarts

    def reset(self) -> None:
        self._times.clear()


class Health:
    """Liveness from a worker's heartbeats: hung when the last one is older than
    ``hang_timeout_s`` or when it reports a handle() call running past ``handler_timeout_s``."""

    def __init__(self, now: float, hang_timeout_s: float = 30.0,
                 handler_timeout_s: float = 60.0) -> None:
        self.hang_timeout_s = hang_timeout_s
        self.handler_timeout_s = handler_timeout_s
        self.last_beat = now  # the start counts as a beat: a worker gets hang_timeout_s to speak
        self.busy_ms = 0
        self.processed = 0
        self.failed = 0
        self.state = "starting"
        self.event: tuple[str, int, int] | None = None  # what handle() is on, if anything
        self.in_flight = 0  # handler calls running (concurrency > 1: more than one)

    def beat(self, now: float, message: dict[str, Any]) -> None:
        self.last_beat = now
        self.busy_ms = int(message.get("busy_ms", 0))
        self.processed = int(message.get("processed", self.processed))
        self.failed = int(message.get("failed", self.failed))
        self.state = str(message.get("state", self.state))
        event = message.get("event")
        try:
            self.in_flight = int(message.get("in_flight", 1 if event else 0))
        except (TypeError, ValueError):
            self.in_flight = 0
        try:
            self.event = (str(event[0]), int(event[1]), int(event[2])) if event else None
        except (TypeError, ValueError, IndexError):
            self.event = None

    def handling(self, now: float) -> tuple[str, int, int, float] | None:
        """The event handle() was on at the last beat and for how long by ``now``, in
        seconds (if still on it)."""
        if self.event is None:
            return None
        return (*self.event, self.busy_ms / 1000 + max(0.0, now - self.last_beat))

    def silent_s(self, now: float) -> float:
        return now - self.last_beat

    def hung(self, now: float) -> str | None:
        """Why the worker counts as hung, or None while it is healthy."""
        silent = now - self.last_beat
        if silent > self.hang_timeout_s:
            return f"no heartbeat for {silent:.0f} s (hang_timeout_s={self.hang_timeout_s:g})"
        if self.busy_ms > self.handler_timeout_s * 1000:
            return (f"handle() busy for {self.busy_ms / 1000:.0f} s "
                    f"(handler_timeout_s={self.handler_timeout_s:g})")
        return None


Key = tuple[str, int, int]  # topic, partition, offset
MAX_SUSPECTS = 10_000  # crash counts kept per worker; the oldest go first


class CrashLedger:
    """Crash-correlated poison detection for one worker: how often a replica died while each
    event was in a handler (from the host's flight record, runtime.worker.flight).

    An event is due for quarantine after ``after`` crashes with the last one ALONE in flight:
    a host runs a suspect (one crash or more) with nothing beside it, so when concurrency
    put innocent events in flight beside a poisonous one, the innocents pass alone next time
    and only the event that kills the host alone is quarantined.  ``after`` 0: never.
    """

    def __init__(self, after: int = 3, quarantined: set[Key] | None = None) -> None:
        self.after = after
        self.crashes: dict[Key, list[str]] = {}  # event -> why the host died, each time
        self.quarantined: set[Key] = set(quarantined or ())

    def record(self, busy: list[Key], reason: str) -> list[Key]:
        """Count one crash (``reason``) with ``busy`` in handlers; return the events now due."""
        alone = len(busy) == 1
        due = []
        for key in busy:
            if key in self.quarantined:
                continue
            reasons = self.crashes.pop(key, [])  # re-inserted: the newest last
            reasons.append(reason)
            self.crashes[key] = reasons
            if self.after and alone and len(reasons) >= self.after:
                due.append(key)
        while len(self.crashes) > MAX_SUSPECTS:
            del self.crashes[next(iter(self.crashes))]
        return due

    def quarantine(self, key: Key) -> list[str]:
        """``key`` is in the DLQ now: hosts skip it; return the reasons it was counted for."""
        self.quarantined.add(key)
        return self.crashes.pop(key, [])

    def suspects(self) -> list[Key]:
        return list(self.crashes)
