"""Periodic events, ``[schedules.NAME]``: each tick sent once and never early, through kill -9
of everything and a second mover sending the same ticks; late ticks coalesce into the latest;
a schedule rail.toml cannot run is one line naming its key."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from brokerd import protocol as p
from runtime.config import ConfigError, ScheduleSection, load_config
from runtime.connection import Connection
from runtime.dlq import header, read_all
from runtime.worker import Hosted, Options
from runtime.worker import schedules as sched
from runtime.worker.delays import DELAY_TOPIC, MOVER_GROUP
from runtime.worker.mover import Mover
from runtime.worker.schedules import Ticker
from tests.helpers import wait_for, written_lines
from tests.integration.test_supervisor import Rail, rail  # noqa: F401

RECORDER = """
import time
def handle(event, ctx):
    with open({out!r}, "a") as f:
        f.write(f"{{event.value['tick']}} {{event.value['due_ms']}} {{time.time()}}\\n")
"""


def test_late_ticks_coalesce_into_the_latest_and_a_start_sends_one_still_in_time() -> None:
    every_s = ScheduleSection(topic="t", every="1s", catch_up="0.5s")
    ticker = Ticker("beat", every_s, 10_400)
    assert ticker.next == 10  # due 0.4 s ago: sent at the start
    assert [ticker.take(t) for t in (10_400, 10_999, 11_000, 11_001)] == [10, None, 11, None]
    assert ticker.take(14_200) == 14 and ticker.skipped == 2  # 12 and 13: one send, not three
    assert ticker.take(15_400) == 15 and ticker.skipped == 2  # 0.4 s late: still in time
    assert ticker.take(19_600) is None and ticker.skipped == 6  # 16-18; 19 is 0.6 s late
    assert ticker.take(19_900) is None and ticker.take(20_000) == 20
    daily = ScheduleSection(topic="t", every="1d", offset="3h", catch_up=60)
    day = 86_400_000
    late = Ticker("nightly", daily, 5 * day + 3 * 3_600_000 + 61_000)
    assert late.next == 6  # 61 s after today's 03:00: the next is tomorrow's
    assert late.due(6) == 6 * day + 3 * 3_600_000
    assert sched.producer_id("nightly", 6) == sched.producer_id("nightly", 6) != \
        sched.producer_id("nightly", 7)
    assert ticker.partition(7, 3) == 1 and \
        Ticker("k", ScheduleSection(topic="t", every=1, key="a"), 0).partition(7, 3) == \
        p.partition_for_key("a", 3)


@pytest.mark.parametrize(("body", "error"), [
    ('topic = "t"\nevery = "fast"', "schedules.beat.every: expected a duration like '30s'"),
    ('topic = "t"\nevery = "1m"\noffset = "2m"', "schedules.beat.offset: less than every"),
    ('topic = "t"\nevery = "0s"', "schedules.beat.every: at least 1 ms"),
    ('topic = "t"\nevery = "1m"\ncolour = "red"',
     "schedules.beat: object contains unknown field colour"),
    ('every = "1m"', "schedules.beat: object missing required field topic"),
    ('topic = "t"\ncron = "61 * * * *"', "schedules.beat.cron: minute: '61' is not a value"),
    ('topic = "t"', "schedules.beat: give either every (an interval) or cron"),
])
def test_a_schedule_rail_toml_cannot_run_is_one_line_naming_its_key(
        tmp_path: Path, body: str, error: str) -> None:
    (tmp_path / "rail.toml").write_text(f"[schedules.beat]\n{body}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "rail.toml")
    assert error in str(caught.value), caught.value
    (tmp_path / "rail.toml").write_text('[schedules."../etc"]\ntopic = "t"\nevery = 1\n')
    with pytest.raises(ConfigError, match="a schedule name is letters"):
        load_config(tmp_path / "rail.toml")


def ticks(conn: Connection, topic: str) -> list[tuple[int, int, int]]:
    """(tick, due ms, append ms) of each event in ``topic``, in offset order per partition."""
    return [(int(header(e, sched.TICK) or -1), int(header(e, sched.DUE) or -1), e.timestamp)
            for e in read_all(conn, topic)]


def test_each_tick_is_sent_once_never_early_also_by_two_movers_and_after_a_restart(
        broker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sched.ENV, sched.to_env(
        {"beat": ScheduleSection(topic="beat", every="300ms", headers={"team": "ops"})}))
    conn = Connection(broker.api)
    conn.call(p.CreateTopic(topic="beat", partitions=2, exist_ok=True))
    conn.call(p.CreateTopic(topic=DELAY_TOPIC, partitions=2, exist_ok=True))

    def mover(member: str) -> Mover:
        return Mover(Hosted(Options(broker=broker.api, group=MOVER_GROUP, topics=[DELAY_TOPIC],
                                    name=member, member_id=member), logging.getLogger("test")))

    movers = [mover("m0"), mover("m1")]  # both send every tick: the broker keeps one
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for m in movers:
                m.step()
        both_sent = sum(m.ticks_sent for m in movers)
        stored = len(read_all(conn, "beat"))
        movers[1].consumer.close()
        movers[1].conn.close()
        movers[0].consumer.close()
        movers[0].conn.close()
        movers = [mover("m2")]  # a restart within the tick: it sends the latest tick again
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            movers[0].step()
    finally:
        for m in movers:
            m.consumer.close()
            m.conn.close()
    got = ticks(conn, "beat")
    numbers = sorted(t for t, _, _ in got)
    assert len(numbers) == len(set(numbers)), f"a tick twice: {numbers}"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # none skipped
    assert stored >= 5 and both_sent >= 2 * stored - 2  # both movers sent (nearly) each
    assert len(numbers) >= stored + 2
    for tick, due, appended in got:
        assert due == tick * 300 and appended >= due, f"tick {tick} stored before its time"
    events = read_all(conn, "beat")
    assert {header(e, "team") for e in events} == {"ops"}
    assert all(e.value == {"schedule": "beat", "tick": int(header(e, sched.TICK) or -1),
                           "due_ms": int(header(e, sched.DUE) or -1)} for e in events)
    assert {e.partition for e in events} == {0, 1}  # keyless: tick % partitions
    conn.close()


def test_a_cron_schedule_sends_its_minute_once(broker: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sched.ENV, sched.to_env({"minutely": ScheduleSection(
        topic="cron", cron="* * * * *", timezone="Europe/Paris", key="m")}))

    def mover(member: str) -> Mover:
        return Mover(Hosted(Options(broker=broker.api, group=MOVER_GROUP, topics=[DELAY_TOPIC],
                                    name=member, member_id=member), logging.getLogger("test")))

    for member in ("m0", "m1"):  # the second, as if restarted, sends the same minute again
        m = mover(member)
        try:
            deadline = time.monotonic() + 10
            while not m.ticks_sent:
                assert time.monotonic() < deadline, "no tick sent"
                m.step()
        finally:
            m.consumer.close()
            m.conn.close()
    conn = Connection(broker.api)
    try:
        got = ticks(conn, "cron")
    finally:
        conn.close()
    assert len(got) == 1 or (len(got) == 2 and got[1][0] == got[0][0] + 1), got  # a minute
    for tick, due, appended in got:  # may have turned between the two
        assert due == tick * 60_000 and appended >= due


def test_a_schedule_goes_on_through_kill_9_of_rail_up_without_a_tick_twice(
        rail: Rail) -> None:  # noqa: F811
    rail.script("rec.py", RECORDER.format(out=str(rail.out)))
    rail.write_toml('[workers.rec]\nscript = "rec.py"\ntopics = ["orders"]\n'
                    '[schedules.beat]\ntopic = "orders"\nevery = "0.5s"\n')
    rail.up()

    def arrivals() -> list[tuple[int, int, float]]:
        return [(int(t), int(d), float(at)) for t, d, at in
                (line.split() for line in written_lines(rail.out))]

    wait_for(lambda: len(arrivals()) >= 4, timeout=30, what="4 ticks")
    assert rail.proc is not None
    os.kill(rail.proc.pid, signal.SIGKILL)  # the broker, the mover and the worker die with it
    rail.proc.wait(5)
    before = len(arrivals())
    rail.up()
    wait_for(lambda: len(arrivals()) >= before + 4, timeout=30, what="4 more ticks")
    got = arrivals()
    numbers = [t for t, _, _ in got]
    assert len(numbers) == len(set(numbers)), f"a tick twice: {numbers}"
    for tick, due, at in got:
        assert due == tick * 500 and at * 1000 >= due, f"tick {tick} handled before its time"
    assert "rail.delays" in {w["name"] for w in rail.status()["workers"]}
