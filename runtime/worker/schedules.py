"""Periodic events (Celery beat, cron): ``[schedules.NAME]`` in rail.toml sends an event to a
topic every interval, run by the delay mover (``runtime/worker/mover.py``).

Tick ``n`` of a schedule falls due at ``n * every + offset`` ms of Unix time (UTC), so ticks
are the same whichever process computes them and whenever it starts.  A tick is sent once its
time has come (never early) as an idempotent produce whose producer id is derived from
(schedule, tick), at sequence 0, to a partition the tick alone picks (its key's, or
``n % partitions``): a tick sent again, by a mover restarted after a crash or by a second
mover, is dropped by the broker as a duplicate (docs/protocol.md §8).  Late ticks coalesce:
a mover that falls behind, or starts after a tick's time, sends only the latest tick due,
and only while it is at most ``catch_up`` late; the ticks before it are skipped and logged,
as cron and Celery beat skip what came due while they were down.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any

import msgspec

from brokerd import protocol as p
from runtime.config import ScheduleSection
from runtime.worker.cron import Cron
from runtime.worker.delays import DELAY_TOPIC

ENV = "RAIL_SCHEDULES"  # the mover's schedules, as JSON, set by the supervisor
NAME = "rail.schedule"  # headers of a tick's event
TICK = "rail.schedule.tick"
DUE = "rail.schedule.due-ms"
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def duration_ms(value: str | float, what: str) -> int:
    """``value`` in whole ms; ValueError naming ``what`` for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration like '30s', '5m', '1d', got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what}: a duration is a finite number >= 0, got {value!r}")
        return round(value * 1000)
    match = _DURATION.fullmatch(value)
    ms = float(match.group(1)) * _UNIT_MS[match.group(2)] if match else math.inf
    if not math.isfinite(ms):
        raise ValueError(f"{what}: expected a duration like '30s', '5m', '1d', got {value!r}")
    return round(ms)


class Every:
    """Tick ``n`` falls due at ``n * every + offset`` ms of Unix time."""

    def __init__(self, every: int, offset: int) -> None:
        self.every, self.offset = every, offset

    def due(self, tick: int) -> int:
        return tick * self.every + self.offset

    def latest(self, now_ms: int) -> int:
        return (now_ms - self.offset) // self.every

    def after(self, tick: int) -> int:
        return tick + 1

    def between(self, first: int, last: int) -> int:
        return last - first


class CronClock:
    """A tick is the Unix minute of a fire time of the cron expression (cron.py)."""

    def __init__(self, cron: Cron) -> None:
        self.cron = cron

    def due(self, tick: int) -> int:
        return tick * 60_000

    def latest(self, now_ms: int) -> int:
        latest = self.cron.latest(now_ms // 60_000)
        return -1 if latest is None else latest

    def after(self, tick: int) -> int:
        return self.cron.after(tick)

    def between(self, first: int, last: int) -> int:
        """How many ticks from ``first`` up to ``last`` (not counting it); at most 1,000
        are counted (for a log line)."""
        count, tick = 0, first
        while tick < last and count < 1000:
            count, tick = count + 1, self.cron.after(tick)
        return count


class Ticker:
    """One schedule's ticks: which is next, and which to send now."""

    def __init__(self, name: str, section: ScheduleSection, now_ms: int) -> None:
        self.name = name
        self.section = section
        if not p.valid_topic_name(section.topic) or section.topic == DELAY_TOPIC:
            raise ValueError(f"schedules.{name}.topic: {section.topic!r} is not a topic a "
                             "schedule can send to (letters, digits, '.', '_', '-', up to 249)")
        self.catch_up = duration_ms(section.catch_up, f"schedules.{name}.catch_up")
        self.clock = self._clock(name, section)
        self.skipped = 0
        latest = self.clock.latest(now_ms)  # the tick at or before now, if still in time
        self.next = latest if now_ms - self.clock.due(latest) <= self.catch_up else \
            self.clock.after(latest)

    def _clock(self, name: str, section: ScheduleSection) -> Every | CronClock:
        if (section.every is None) == (not section.cron):
            raise ValueError(f"schedules.{name}: give either every (an interval) or cron "
                             "(an expression like '0 3 * * *')")
        if section.cron:
            if section.offset:
                raise ValueError(f"schedules.{name}.offset: goes with every, not cron")
            try:
                return CronClock(Cron(section.cron, section.timezone))
            except ValueError as exc:
                raise ValueError(f"schedules.{name}.cron: {exc}") from None
        if section.timezone != "UTC":
            raise ValueError(f"schedules.{name}.timezone: goes with cron (every counts from "
                             "the Unix epoch)")
        assert section.every is not None
        every = duration_ms(section.every, f"schedules.{name}.every")
        offset = duration_ms(section.offset, f"schedules.{name}.offset")
        if every < 1:
            raise ValueError(f"schedules.{name}.every: at least 1 ms")
        if offset >= every:
            raise ValueError(f"schedules.{name}.offset: less than every "
                             f"({offset} ms >= {every} ms)")
        return Every(every, offset)

    def due(self, tick: int) -> int:
        return self.clock.due(tick)

    def take(self, now_ms: int) -> int | None:
        """The tick to send now, if one is due (the latest; the ones before it skipped)."""
        if now_ms < self.clock.due(self.next):
            return None
        latest = self.clock.latest(now_ms)
        self.skipped += self.clock.between(self.next, latest)
        self.next = self.clock.after(latest)
        if now_ms - self.clock.due(latest) > self.catch_up:
            self.skipped += 1
            return None
        return latest

    def record(self, tick: int) -> tuple[Any, str | None, dict[str, str]]:
        """The event of ``tick``: value, key, headers."""
        due = self.due(tick)
        value = self.section.value if self.section.value is not None else \
            {"schedule": self.name, "tick": tick, "due_ms": due}
        headers = {**self.section.headers, NAME: self.name, TICK: str(tick), DUE: str(due)}
        return value, self.section.key, headers

    def partition(self, tick: int, count: int) -> int:
        key = self.section.key
        return p.partition_for_key(key, count) if key is not None else tick % count


def producer_id(name: str, tick: int) -> int:
    """The producer id of tick ``tick`` of schedule ``name``: 63 bits of a hash (never 0),
    the same in every process."""
    digest = hashlib.blake2b(f"rail.schedule\0{name}\0{tick}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1 or 1


def check(name: str, section: ScheduleSection) -> None:
    """ValueError naming the key of what a schedule cannot run with."""
    Ticker(name, section, 0)


def to_env(schedules: dict[str, ScheduleSection]) -> str:
    return json.dumps(msgspec.to_builtins(schedules))


def from_env(now_ms: int) -> list[Ticker]:
    raw = os.environ.get(ENV)
    if not raw:
        return []
    sections = msgspec.convert(json.loads(raw), dict[str, ScheduleSection])
    return [Ticker(name, section, now_ms) for name, section in sections.items()]
