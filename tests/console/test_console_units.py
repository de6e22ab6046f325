"""Pure parts of the console: the lag history window, exit reasons read from a worker's
log, events/s between two status replies, and the bind check."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runtime.console.auth import ConsoleConfigError, check_bind, is_loopback
from runtime.console.lag import LagHistory
from runtime.console.supervision import Tree, last_exits


def group(name: str, lags: dict[tuple[str, int], int]) -> dict:
    return {"group": name, "lag": sum(lags.values()),
            "partitions": [{"topic": t, "partition": n, "lag": lag}
                           for (t, n), lag in lags.items()]}


def test_lag_history_keeps_one_hour_per_group_and_topic() -> None:
    history = LagHistory(window_s=3600)
    history.record([group("kitchen", {("orders", 0): 5, ("orders", 1): 2, ("drinks", 0): 1})],
                   now=1000.0)
    history.record([group("kitchen", {("orders", 0): 1, ("drinks", 0): 0})], now=2000.0)
    history.record([group("kitchen", {("orders", 0): 0, ("drinks", 0): 0})], now=4700.0)
    series = history.of("kitchen")
    assert series[""] == [(2000.0, 1), (4700.0, 0)]  # the point at 1000 s is past the hour
    assert series["orders"] == [(2000.0, 1), (4700.0, 0)]
    assert history.of("nobody") == {"": []}


def test_last_exit_of_each_replica_is_read_from_the_workers_log(tmp_path: Path) -> None:
    (tmp_path / "pizza.log").write_text(
        "pizza.0 | hello\n"
        "pizza.0 | 2026-11-29 20:00:01 rail: pid 41 exited with code 1\n"
        "pizza.1 | 2026-11-29 20:00:02 rail: pid 42 exited with signal SIGKILL\n"
        "pizzas.0 | 2026-11-29 20:00:03 rail: pid 50 exited with code 3\n"
        "pizza.0 | 2026-11-29 20:00:04 rail: pid 43 exited with signal SIGTERM\n")
    assert last_exits(tmp_path, "pizza") == {
        0: {"pid": 43, "how": "signal SIGTERM", "at": "2026-11-29 20:00:04"},
        1: {"pid": 42, "how": "signal SIGKILL", "at": "2026-11-29 20:00:02"}}
    assert last_exits(tmp_path, "absent") == {}


def status(processed: int, pid: int, logs: Path) -> dict:
    replica = {"replica": 0, "pid": pid, "state": "running", "processed": processed,
               "handling": {"topic": "orders", "partition": 0, "offset": 9, "for_s": 2.5}}
    return {"pid": 1, "uptime_s": 1.0, "stopping": False, "logs": str(logs),
            "broker": {"state": "running"},
            "workers": [{"name": "pizza", "processed": processed, "processes": [replica]}]}


def test_events_per_second_come_from_two_scrapes_and_restart_with_a_new_pid(
        tmp_path: Path) -> None:
    tree = Tree("tcp://127.0.0.1:1")
    first = tree.snapshot(status(100, 7, tmp_path), now=10.0)
    assert first["workers"][0]["events_per_s"] is None
    second = tree.snapshot(status(150, 7, tmp_path), now=12.0)
    assert second["workers"][0]["events_per_s"] == 25.0
    assert second["workers"][0]["processes"][0]["events_per_s"] == 25.0
    assert second["workers"][0]["processes"][0]["event_age_s"] == 2.5
    third = tree.snapshot(status(10, 8, tmp_path), now=13.0)  # a new process counts anew
    assert third["workers"][0]["processes"][0]["events_per_s"] is None


def test_binding_beyond_loopback_needs_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.0.0.2")
    check_bind("127.0.0.1", "")
    check_bind("0.0.0.0", "t0ken")
    with pytest.raises(ConsoleConfigError, match="token"):
        check_bind("0.0.0.0", "")


def test_lag_history_kept_in_a_file_survives_a_restart_and_stays_one_window(
        tmp_path: Path) -> None:
    path, now = tmp_path / "lag.jsonl", time.time()
    history = LagHistory(window_s=60, path=path)
    history.record([group("kitchen", {("orders", 0): 9})], now=now - 200)  # past the hour
    history.record([group("kitchen", {("orders", 0): 5, ("drinks", 0): 1})], now=now - 30)
    history.record([group("kitchen", {("orders", 0): 2, ("drinks", 0): 0})], now=now - 10)
    with open(path, "ab") as f:
        f.write(b'[12, {"kitch')  # a console killed mid-write
    again = LagHistory(window_s=60, path=path)  # the console restarted
    assert again.of("kitchen") == history.of("kitchen") == {
        "": [(now - 30, 6), (now - 10, 2)], "orders": [(now - 30, 5), (now - 10, 2)],
        "drinks": [(now - 30, 1), (now - 10, 0)]}
    # the file spans more than two windows: the next scrape rewrites it with the last one
    fresh = LagHistory(window_s=60, path=tmp_path / "fresh.jsonl")
    fresh.record([group("g", {("t", 0): 1})], now=now - 200)
    fresh.record([group("g", {("t", 0): 3})], now=now)
    lines = (tmp_path / "fresh.jsonl").read_bytes().splitlines()
    assert len(lines) == 1 and LagHistory(window_s=60, path=tmp_path / "fresh.jsonl").of(
        "g")[""] == [(now, 3)]
