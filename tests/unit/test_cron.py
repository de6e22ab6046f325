"""Cron expressions of ``[schedules.NAME] cron = ...`` (runtime/worker/cron.py): fire times
in a zone, through daylight-saving changes; what is not an expression is one line naming the
field; a schedule's ticks on cron coalesce and catch up as on an interval."""

from __future__ import annotations

import datetime as dt

import pytest

from runtime.config import ScheduleSection
from runtime.worker.cron import Cron
from runtime.worker.schedules import Ticker

UTC = dt.UTC


def minute(text: str) -> int:
    """The Unix minute of an ISO time (with its offset)."""
    return int(dt.datetime.fromisoformat(text).timestamp()) // 60


def iso(tick: int, zone: str = "UTC") -> str:
    return dt.datetime.fromtimestamp(tick * 60, Cron("* * * * *", zone).zone).isoformat()


def fires(cron: Cron, start: str, count: int) -> list[str]:
    out, tick = [], minute(start)
    for _ in range(count):
        tick = cron.after(tick)
        out.append(iso(tick, cron.zone.key))
    return out


def test_steps_ranges_lists_and_names() -> None:
    assert fires(Cron("*/20 9-10 * * *"), "2026-12-01T09:30:00+00:00", 4) == [
        "2026-12-01T09:40:00+00:00", "2026-12-01T10:00:00+00:00",
        "2026-12-01T10:20:00+00:00", "2026-12-01T10:40:00+00:00"]
    weekdays = Cron("0 3 * * 1-5")  # 2026-12-04 is a Friday
    assert fires(weekdays, "2026-12-04T03:00:00+00:00", 2) == [
        "2026-12-07T03:00:00+00:00", "2026-12-08T03:00:00+00:00"]
    named, numbered = Cron("0 12 * JAN,jul sun"), Cron("0 12 * 1,7 7")
    assert fires(named, "2026-01-01T00:00:00+00:00", 6) == \
        fires(numbered, "2026-01-01T00:00:00+00:00", 6)
    assert fires(Cron("5/20 * * * *"), "2026-12-01T00:00:00+00:00", 3) == [
        "2026-12-01T00:05:00+00:00", "2026-12-01T00:25:00+00:00",
        "2026-12-01T00:45:00+00:00"]
    assert fires(Cron("@daily"), "2026-12-01T00:00:00+00:00", 1) == [
        "2026-12-02T00:00:00+00:00"]


def test_a_day_of_month_or_a_day_of_week_fires_when_both_are_restricted() -> None:
    friday_13 = Cron("0 0 13 * FRI")  # as Vixie cron: the 13th, and every Friday
    assert fires(friday_13, "2026-11-01T00:00:00+00:00", 4) == [
        "2026-11-06T00:00:00+00:00", "2026-11-13T00:00:00+00:00",
        "2026-11-20T00:00:00+00:00", "2026-11-27T00:00:00+00:00"]
    assert fires(friday_13, "2026-12-01T00:00:00+00:00", 4) == [  # the 13th is a Sunday
        "2026-12-04T00:00:00+00:00", "2026-12-11T00:00:00+00:00",
        "2026-12-13T00:00:00+00:00", "2026-12-18T00:00:00+00:00"]
    assert fires(Cron("0 0 13 * *"), "2026-11-01T00:00:00+00:00", 1) == [
        "2026-11-13T00:00:00+00:00"]
    assert fires(Cron("0 0 29 2 *"), "2026-01-01T00:00:00+00:00", 1) == [
        "2028-02-29T00:00:00+00:00"]


def test_local_times_through_daylight_saving_changes() -> None:
    paris = Cron("30 2 * * *", "Europe/Paris")
    # 2026-03-29 has no 02:30 in Paris (02:00 -> 03:00); 2026-10-25 has it twice: once
    assert fires(paris, "2026-03-27T12:00:00+00:00", 3) == [
        "2026-03-28T02:30:00+01:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]
    assert fires(paris, "2026-10-24T12:00:00+00:00", 2) == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    assert paris.latest(minute("2026-10-25T01:45:00+00:00")) == \
        minute("2026-10-25T00:30:00+00:00")
    assert paris.latest(minute("2026-10-25T00:29:00+00:00")) == \
        minute("2026-10-24T00:30:00+00:00")


@pytest.mark.parametrize(("expression", "zone", "error"), [
    ("61 * * * *", "UTC", "minute: '61' is not a value from 0 to 59"),
    ("* * *", "UTC", "5 fields"),
    ("0 0 31 2 *", "UTC", "never fires"),
    ("5-1 * * * *", "UTC", "minute: '5-1' runs backwards"),
    ("0 0 * FOO *", "UTC", "month: 'FOO' is not a value from 1 to 12 or a name (JAN...)"),
    ("*/0 * * * *", "UTC", "minute: '0' is not a value from 1 to 60"),
    ("0 0 * * *", "Mars/Olympus", "timezone 'Mars/Olympus' is not a time zone name"),
    ("0 0 * * *", "../../etc/passwd", "is not a time zone name"),
])
def test_what_is_not_an_expression_is_one_line_naming_the_field(
        expression: str, zone: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        Cron(expression, zone)
    assert error in str(caught.value), caught.value


def test_a_schedule_on_cron_catches_up_and_coalesces_like_one_on_an_interval() -> None:
    section = ScheduleSection(topic="t", cron="*/10 * * * *", catch_up="5m")
    at = minute("2026-12-01T09:04:00+00:00") * 60_000
    ticker = Ticker("c", section, at)
    assert iso(ticker.next) == "2026-12-01T09:00:00+00:00"  # 4 minutes late: sent at once
    assert ticker.take(at) == minute("2026-12-01T09:00:00+00:00")
    assert ticker.take(at + 60_000) is None and iso(ticker.next) == "2026-12-01T09:10:00+00:00"
    later = minute("2026-12-01T09:53:00+00:00") * 60_000
    assert ticker.take(later) == minute("2026-12-01T09:50:00+00:00")
    assert ticker.skipped == 4  # 09:10 to 09:40: one send, not five
    late = Ticker("c", section, minute("2026-12-01T09:06:00+00:00") * 60_000)
    assert iso(late.next) == "2026-12-01T09:10:00+00:00"  # 6 minutes late: not sent
    with pytest.raises(ValueError, match="schedules.c: give either every"):
        Ticker("c", ScheduleSection(topic="t", cron="* * * * *", every=60), 0)
    with pytest.raises(ValueError, match="schedules.c.offset: goes with every"):
        Ticker("c", ScheduleSection(topic="t", cron="* * * * *", offset=5), 0)
    with pytest.raises(ValueError, match="schedules.c.cron: minute: '99'"):
        Ticker("c", ScheduleSection(topic="t", cron="99 * * * *"), 0)
    with pytest.raises(ValueError, match="schedules.c.timezone: goes with cron"):
        Ticker("c", ScheduleSection(topic="t", every=60, timezone="Europe/Paris"), 0)
