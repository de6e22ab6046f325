"""The console in headless chromium against a real ``rail up``: the pages load, the tree
shows a worker killed with kill -9 as restarting and then running, a message sent is found
by its key, and a dead letter replayed from the page reaches the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from brokerd import protocol as p
from runtime.client import Producer
from runtime.connection import Connection
from tests.console.browser import (
    Process,
    need_browser,
    rail,
    script_errors,
    shot,
    start_browser,
    start_console,
    stop_browser,
    wait_until,
)
from tests.helpers import ROOT, free_port, python_env, wait_for

APPENDER = """
def handle(event, ctx):
    with open({out!r}, "a") as f:
        f.write(f"{{event.value}}\\n")
"""
OVEN = """
import os

def handle(event, ctx):
    if not os.path.exists({flag!r}):
        raise ValueError("the oven is cold")
    with open({out!r}, "a") as f:
        f.write(f"{{event.value}}\\n")
"""


class Rail:
    """``rail up`` with a pizza worker (slow to restart, so the tree shows it restarting)
    and an oven worker that dead-letters everything until its flag file exists."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.api = f"tcp://127.0.0.1:{free_port()}"
        self.control = f"tcp://127.0.0.1:{free_port()}"
        (folder / "pizza.py").write_text(APPENDER.format(out=str(folder / "pizza.out")))
        (folder / "oven.py").write_text(OVEN.format(flag=str(folder / "oven.hot"),
                                                    out=str(folder / "oven.out")))
        (folder / "rail.toml").write_text(
            f'[broker]\ndata_dir = "data"\nbind = "{self.api}"\n'
            f'ingest = "tcp://127.0.0.1:{free_port()}"\n'
            f'[supervisor]\ncontrol = "{self.control}"\ngrace_s = 3\n'
            '[topics.orders]\npartitions = 2\n[topics.bakes]\npartitions = 1\n'
            '[workers.pizza]\nscript = "pizza.py"\ntopics = ["orders"]\nbackoff_s = 3\n'
            '[workers.oven]\nscript = "oven.py"\ntopics = ["bakes"]\nretries = 0\n')
        self.up = Process(rail("up", "-c", str(folder / "rail.toml")), folder / "up.log")

    def status(self) -> dict[str, Any]:
        done = subprocess.run(rail("status", "--json", "--control", self.control),
                              capture_output=True, env=python_env(), cwd=ROOT, timeout=30,
                              check=False)
        return msgspec.json.decode(done.stdout) if done.returncode == 0 else {}

    def running(self) -> bool:
        if self.up.proc.poll() is not None:  # no point waiting: say why at once
            raise RuntimeError(f"rail up exited: {self.up.log.read_text()[-3000:]}")
        workers = self.status().get("workers", [])
        return len(workers) == 2 and all(w["state"] == "running" for w in workers)


@pytest.fixture(scope="module")
def rail_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rail]:
    need_browser()
    r = Rail(tmp_path_factory.mktemp("console"))
    try:
        wait_for(r.running, 40, 0.2, "rail up with both workers running")
        yield r
    finally:
        r.up.stop()


@pytest.fixture(scope="module")
def console(rail_up: Rail) -> Iterator[str]:
    proc, url = start_console(rail_up.folder, rail_up.api, rail_up.control)
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_browser()
    driver, profile = start_browser()
    try:
        yield driver
    finally:
        stop_browser(driver, profile)


def open_page(browser: Any, url: str, hash_: str) -> None:
    from selenium.webdriver.common.by import By
    browser.get(f"{url}/#{hash_}")
    wait_until(f"page #{hash_}", lambda: browser.find_element(By.ID, "page")
               .get_attribute("data-ready") == f"#{hash_}", 15)


def css(browser: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By
    return browser.find_elements(By.CSS_SELECTOR, selector)


def click(browser: Any, selector: str) -> None:
    """Click the element, found again if the tree redrew it meanwhile (every second)."""
    def clicked() -> bool:
        found = css(browser, selector)
        if found:
            found[0].click()
        return bool(found)
    wait_until(f"a click on {selector}", clicked)


def replica(browser: Any, worker: str) -> dict[str, str] | None:
    rows = css(browser, f'tr.replica[data-worker="{worker}"]')
    return {"state": rows[0].get_attribute("data-state"),
            "pid": rows[0].get_attribute("data-pid")} if rows else None


def test_every_page_loads_with_live_data(rail_up: Rail, console: str, browser: Any) -> None:
    with Producer(rail_up.api) as producer:
        for i in range(20):
            producer.send("orders", {"pizza": i}, key=f"table-{i}")
        producer.flush()
    open_page(browser, console, "/")
    wait_until("the tree's pizza replica", lambda: (replica(browser, "pizza") or {}).get(
        "state") == "running")
    wait_until("live updates", lambda: css(browser, "#live.on"))
    wait_until("the overview's topic count", lambda: css(browser, "#topic-count"))
    shot(browser, "overview")
    for page, marker in (("/topics", 'tr.topic-row[data-topic="orders"]'),
                         ("/topic/orders", "tr.message"),
                         ("/groups", 'tr.group-row[data-group="pizza"]'),
                         ("/group/pizza", "tr.lag-row"),
                         ("/dlq", "#dlqs")):
        open_page(browser, console, page)
        wait_until(f"{marker} on {page}", lambda m=marker: css(browser, m))
        assert not css(browser, "#page .error"), browser.find_element("id", "page").text
        if page in ("/topics", "/group/pizza"):
            shot(browser, page.strip("/").split("/")[0])
    assert script_errors(browser) == []


def test_tree_shows_a_worker_killed_with_kill_9_restarting_then_running(
        rail_up: Rail, console: str, browser: Any) -> None:
    open_page(browser, console, "/")
    before = wait_until("pizza running", lambda: (r := replica(browser, "pizza")) and
                        r["state"] == "running" and r["pid"] and r)
    os.kill(int(before["pid"]), signal.SIGKILL)
    wait_until("pizza restarting on the page", lambda: (replica(browser, "pizza") or {}).get(
        "state") == "restarting", 10)
    shot(browser, "restarting")
    after = wait_until("pizza running again", lambda: (r := replica(browser, "pizza")) and
                       r["state"] == "running" and r["pid"] not in ("", before["pid"]) and r, 20)
    assert after["pid"] != before["pid"]
    exit_text = wait_until("the last exit", lambda: css(
        browser, 'tr.replica[data-worker="pizza"] td.exit')[0].text)
    assert "SIGKILL" in exit_text and before["pid"] in exit_text


def test_a_message_sent_is_found_by_key_in_the_browser(rail_up: Rail, console: str,
                                                      browser: Any) -> None:
    from selenium.webdriver.support.ui import Select
    with Producer(rail_up.api) as producer:
        for i in range(300):
            producer.send("orders", {"order": i}, key=f"order-{i}")
        producer.send("orders", {"order": "needle"}, key="needle-key-7",
                      headers={"trace": "abc"})
        producer.flush()
    open_page(browser, console, "/topic/orders")
    Select(css(browser, "#b-from")[0]).select_by_value("start")
    css(browser, "#b-key")[0].send_keys("needle-key-7")
    css(browser, "#b-go")[0].click()
    rows = wait_until("the message with the key", lambda: [
        r for r in css(browser, "tr.message") if r.find_element(
            "css selector", "td.key").text == "needle-key-7"])
    assert len(css(browser, "tr.message")) == 1
    assert "needle" in rows[0].text and "trace" in rows[0].text
    shot(browser, "messages")


def test_a_dead_letter_replayed_from_the_page_reaches_the_worker(
        rail_up: Rail, console: str, browser: Any) -> None:
    out, dlq = rail_up.folder / "oven.out", "bakes.dlq"
    with Producer(rail_up.api) as producer:
        producer.send("bakes", "bread-1", key="b1")
        producer.flush()

    def dead_letters() -> int:
        conn = Connection(rail_up.api, timeout_s=5)
        try:
            parts = conn.call(p.Metadata(topics=[dlq])).topics[0].partitions
            return sum(x.end_offset - x.start_offset for x in parts)
        except Exception:  # noqa: BLE001 - not created yet
            return 0
        finally:
            conn.close()
    wait_for(dead_letters, 30, 0.2, "the event in bakes.dlq")
    (rail_up.folder / "oven.hot").write_text("")
    open_page(browser, console, "/dlq/bakes")
    letter = wait_until("the dead letter", lambda: css(browser, "tr.letter"))[0]
    assert "the oven is cold" in letter.text
    css(browser, "#replay")[0].click()
    wait_for(lambda: out.exists() and "bread-1" in out.read_text(), 30, 0.2,
             "the replayed event at the worker")
    wait_until("the letter marked replayed", lambda: css(browser, "tr.letter td.replayed")
               and css(browser, "tr.letter td.replayed")[0].text.startswith("yes"))
    shot(browser, "dead-letters")


def test_scale_and_restart_from_the_tree(rail_up: Rail, console: str, browser: Any) -> None:
    open_page(browser, console, "/")

    def oven(n: int) -> list[dict[str, str]] | None:
        rows = [{"state": r.get_attribute("data-state"), "pid": r.get_attribute("data-pid")}
                for r in css(browser, 'tr.replica[data-worker="oven"]')]
        return rows if len(rows) == n and all(r["state"] == "running" for r in rows) else None
    before = wait_until("oven running", lambda: oven(1))[0]["pid"]
    click(browser, 'button[data-scale="oven"][data-to="2"]')
    two = wait_until("two oven replicas on the tree", lambda: oven(2))
    assert before in {r["pid"] for r in two}
    assert len(next(w for w in rail_up.status()["workers"] if w["name"] == "oven")["pids"]) == 2
    click(browser, 'button[data-scale="oven"][data-to="1"]')
    wait_until("one oven replica again", lambda: oven(1))
    pid = oven(1)[0]["pid"]
    click(browser, 'button[data-restart="oven"]')
    click(browser, "#dialog-ok")
    wait_until("oven restarted with a new pid", lambda: (rows := oven(1)) and
               rows[0]["pid"] not in ("", pid))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
