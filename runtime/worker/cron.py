"""Cron expressions for ``[schedules.NAME] cron = "..."``: the five fields of crontab(5)
(minute, hour, day of month, month, day of week), in a time zone.

Each field is ``*``, a value, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n`` (from
``a`` to the field's end), or a list of those separated by commas; months and days of the
week may be named (``JAN``, ``MON``), and Sunday is 0 or 7.  As in Vixie cron, when both the
day of the month and the day of the week are restricted, a day matching either fires.  The
macros ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and
``@hourly`` stand for their usual expressions.

A fire time is a local minute in the zone; its tick is that instant's Unix minute, so the
same in every process.  A local time that a daylight-saving change skips does not fire; one
that it repeats fires once, at its first occurrence.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@hourly": "0 * * * *"}
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# (name, lowest, highest, names from lowest)
FIELDS = [("minute", 0, 59, []), ("hour", 0, 23, []), ("day of month", 1, 31, []),
          ("month", 1, 12, MONTHS), ("day of week", 0, 7, DAYS)]
SEARCH_DAYS = 366 * 8 + 2  # the longest gap between fires: Feb 29 on a given weekday
UTC = dt.UTC


class Cron:
    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        """ValueError naming the field for an expression that is not one, or that never
        fires."""
        text = MACROS.get(expression.strip().lower(), expression)
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"{expression!r}: 5 fields (minute hour day-of-month month "
                             "day-of-week) or a macro like @daily")
        sets = [parse_field(f, *spec) for f, spec in zip(fields, FIELDS, strict=True)]
        self.minutes, self.hours = sorted(sets[0]), sorted(sets[1])
        self.days, self.months = sets[2], sets[3]
        self.weekdays = {d % 7 for d in sets[4]}
        self.any_day, self.any_weekday = fields[2] == "*", fields[4] == "*"
        try:
            self.zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {timezone!r} is not a time zone name like "
                             "'Europe/Paris' or 'UTC'") from None
        self.expression = expression
        self.after(0)  # raises for an expression that never fires (31 Feb)

    def day_fires(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        in_month, in_week = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def fires_on(self, day: dt.date) -> list[int]:
        """The ticks (Unix minutes) of ``day``'s local fire times, in order."""
        return _fires_on(self, day)

    def local_day(self, tick: int) -> dt.date:
        return dt.datetime.fromtimestamp(tick * 60, self.zone).date()

    def after(self, tick: int) -> int:
        """The first tick after ``tick``."""
        day = self.local_day(tick) - dt.timedelta(days=1)  # a DST day may start before
        for _ in range(SEARCH_DAYS):
            for fire in self.fires_on(day):
                if fire > tick:
                    return fire
            day += dt.timedelta(days=1)
        raise ValueError(f"{self.expression!r} never fires")

    def latest(self, tick: int) -> int | None:
        """The last tick at or before ``tick`` (None: none in the last eight years)."""
        day = self.local_day(tick) + dt.timedelta(days=1)
        for _ in range(SEARCH_DAYS):
            for fire in reversed(self.fires_on(day)):
                if fire <= tick:
                    return fire
            day -= dt.timedelta(days=1)
        return None


@lru_cache(maxsize=64)
def _fires_on(cron: Cron, day: dt.date) -> list[int]:
    if not cron.day_fires(day):
        return []
    out = []
    for hour in cron.hours:
        for minute in cron.minutes:
            local = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=cron.zone)
            instant = local.astimezone(UTC)
            if instant.astimezone(cron.zone).replace(tzinfo=None) != local.replace(tzinfo=None):
                continue  # skipped by a daylight-saving change
            out.append(int(instant.timestamp()) // 60)
    return sorted(set(out))


def parse_field(text: str, what: str, low: int, high: int, names: list[str]) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = _number(step_text, what, 1, high - low + 1, []) if step_text else 1
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = (_number(a, what, low, high, names), _number(b, what, low, high,
                                                                       names))
            if first > last:
                raise ValueError(f"{what}: {base!r} runs backwards")
        else:
            first = _number(base, what, low, high, names)
            last = high if step_text else first
        out.update(range(first, last + 1, step))
    return out


def _number(text: str, what: str, low: int, high: int, names: list[str]) -> int:
    upper = text.strip().upper()
    if upper in names:
        return names.index(upper) + low
    if not upper.isdigit() or not low <= int(upper) <= high:
        raise ValueError(f"{what}: {text!r} is not a value from {low} to {high}"
                         + (f" or a name ({names[0]}...)" if names else ""))
    return int(upper)
