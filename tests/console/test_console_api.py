"""The console's HTTP API against a real broker, without a browser: paging with no ceiling,
search, decoding, confirmations, read-only mode, the token, and bad input answered with a
clear error while the console keeps serving."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from brokerd import protocol as p
from runtime.client import Producer
from runtime.console import ConsoleConfigError, ConsoleThread, Settings
from tests.console.browser import rail, start_console
from tests.helpers import (
    ROOT,
    BrokerProcess,
    free_port,
    python_env,
    start_broker,
    wait_for,
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = start_broker(tmp_path_factory.mktemp("console-api") / "data")
    try:
        with Producer(proc.api) as producer:
            producer._call(p.CreateTopic(topic="menu", partitions=2))
            for i in range(250):
                producer.send("menu", {"dish": i}, key=f"dish-{i}", partition=i % 2)
            producer.send("menu", b"\x82\xa1a\x01\xa1b\x02", key="packed", partition=0)
            producer.send("menu", b"\x00\xffraw", key="raw", partition=0)
            producer.send("menu", '{"text": "json in a string"}', key="js", partition=0)
            producer.flush()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def console(broker: BrokerProcess) -> Iterator[str]:
    proc, url = start_console(broker.data_dir.parent, broker.api, "", "--every", "0.1")
    try:
        yield url
    finally:
        proc.stop()


def call(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "X-Rail-Console": "1", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text


def test_paging_reads_a_partition_past_any_100_message_ceiling(console: str) -> None:
    seen, cursor, pages = [], "", 0
    while True:
        status, page = call(f"{console}/api/topics/menu/messages?partition=1&from=start"
                            f"&limit=40&cursor={cursor}")
        assert status == 200, page
        seen += [m["offset"] for m in page["messages"]]
        pages += 1
        if not page["more"]:
            break
        cursor = page["cursor"]
    assert seen == list(range(125)) and pages == 4
    status, last = call(f"{console}/api/topics/menu/messages?partition=1&from=end&limit=40")
    assert [m["offset"] for m in last["messages"]] == list(range(85, 125))
    assert last["previous"] == "1:45"


def test_a_page_starts_at_an_offset_or_at_a_time(broker: BrokerProcess, console: str) -> None:
    with Producer(broker.api) as producer:
        producer._call(p.CreateTopic(topic="clock", partitions=1))
        for i in range(10):
            producer.send("clock", i, timestamp=1_000_000 + i * 1000)
        producer.flush()
    _, page = call(f"{console}/api/topics/clock/messages?from=offset&offset=7")
    assert [m["offset"] for m in page["messages"]] == [7, 8, 9]
    _, page = call(f"{console}/api/topics/clock/messages?from=timestamp&timestamp=1004500")
    assert [m["offset"] for m in page["messages"]] == [5, 6, 7, 8, 9]
    assert page["messages"][0]["timestamp"] == 1_005_000


def test_search_finds_by_key_and_by_value_across_partitions(console: str) -> None:
    status, page = call(f"{console}/api/topics/menu/messages?from=start&key=dish-201")
    assert status == 200
    assert [(m["partition"], m["offset"]) for m in page["messages"]] == [(1, 100)]
    status, page = call(f"{console}/api/topics/menu/messages?from=start&value=%22dish%22%3A%207"
                        "&limit=1000")
    found = sorted(json.loads(m["value"]["text"])["dish"] for m in page["messages"])
    assert found == [7] + list(range(70, 80))


def test_values_are_shown_as_json_msgpack_text_or_hex(console: str) -> None:
    def value(key: str, mode: str = "auto") -> dict[str, str]:
        _, page = call(f"{console}/api/topics/menu/messages?partition=0&from=start&key={key}"
                       f"&decode={mode}")
        return page["messages"][0]["value"]
    assert value("packed") == {"as": "msgpack", "text": '{\n  "a": 1,\n  "b": 2\n}'}
    assert value("raw") == {"as": "hex", "text": "00 ff 72 61 77"}
    assert value("js")["as"] == "json" and json.loads(value("js")["text"]) == {
        "text": "json in a string"}
    assert value("js", "text") == {"as": "text", "text": '{"text": "json in a string"}'}
    assert value("dish-0", "hex")["text"] == msgspec.msgpack.encode({"dish": 0}).hex(" ")
    assert value("raw", "json")["as"] == "error"


def test_bad_input_gets_a_clear_error_and_the_console_keeps_serving(console: str) -> None:
    status, body = call(f"{console}/api/topics/menu/messages?limit=0")
    assert status == 400 and "limit=0" in body["error"]
    status, body = call(f"{console}/api/topics/menu/messages?partition=9")
    assert status == 400 and "no partition 9" in body["error"]
    status, body = call(f"{console}/api/topics/no-such/messages")
    assert status == 404 and "UNKNOWN_TOPIC" in body["error"]
    status, body = call(f"{console}/api/topics/menu/messages?cursor=zz")
    assert status == 400 and "cursor" in body["error"]
    status, body = call(f"{console}/api/topics", "POST", [1, 2])
    assert status == 400 and "JSON object" in body["error"]
    assert call(f"{console}/api/topics")[0] == 200


def test_topics_are_created_and_deleted_only_with_a_confirmation(console: str) -> None:
    status, body = call(f"{console}/api/topics", "POST", {"name": "specials", "partitions": 3})
    assert status == 200 and body["created"]
    _, topic = call(f"{console}/api/topics/specials")
    assert len(topic["partition_list"]) == 3 and "retention_ms" in topic["retention"]
    status, body = call(f"{console}/api/topics/specials", "DELETE")
    assert status == 400 and "confirm" in body["error"]
    assert call(f"{console}/api/topics/specials")[0] == 200
    assert call(f"{console}/api/topics/specials?confirm=specials", "DELETE")[0] == 200
    assert call(f"{console}/api/topics/specials")[0] == 404


def test_a_change_without_the_console_header_is_refused(console: str) -> None:
    request = urllib.request.Request(f"{console}/api/topics", method="POST",
                                     data=b'{"name": "csrf"}')
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert call(f"{console}/api/topics/csrf")[0] == 404


def test_offsets_of_a_group_without_members_are_reset(broker: BrokerProcess,
                                                     console: str) -> None:
    with Producer(broker.api) as producer:
        producer._call(p.Commit(group="tasters", offsets=[("menu", 0, 5), ("menu", 1, 6)]))
    status, body = call(f"{console}/api/groups/tasters/reset", "POST",
                        {"topic": "menu", "to": "latest"})
    assert status == 200, body
    _, group = call(f"{console}/api/groups/tasters")
    assert {x["partition"]: x["lag"] for x in group["partitions"]} == {0: 0, 1: 0}
    status, body = call(f"{console}/api/groups/tasters/reset", "POST",
                        {"topic": "menu", "to": "sideways"})
    assert status == 400 and "earliest" in body["error"]


def test_lag_history_is_kept_from_the_consoles_own_scrapes(broker: BrokerProcess,
                                                           console: str) -> None:
    with Producer(broker.api) as producer:
        producer._call(p.Commit(group="watchers", offsets=[("menu", 0, 0), ("menu", 1, 0)]))
        backlog = sum(x.end_offset for x in producer._call(
            p.Metadata(topics=["menu"])).topics[0].partitions)

        def history() -> list[list[float]]:
            return call(f"{console}/api/groups/watchers")[1]["lag_history"][""]
        wait_for(lambda: any(lag == backlog for _, lag in history()), 10, 0.1,
                 "the backlog in the lag history")
        for i in range(50):
            producer.send("menu", {"late": i}, partition=1)
        producer.flush()
    points = wait_for(lambda: (h := history()) and h[-1][1] == backlog + 50 and h, 10, 0.1,
                      "the grown lag in the lag history")
    lags = [lag for _, lag in points]
    assert lags[0] == backlog and lags == sorted(lags)
    assert [t for t, _ in points] == sorted(t for t, _ in points)
    per_topic = call(f"{console}/api/groups/watchers")[1]["lag_history"]["menu"]
    assert per_topic[-1][1] == backlog + 50


def test_read_only_console_shows_but_refuses_every_change(broker: BrokerProcess,
                                                          tmp_path: Path) -> None:
    proc, url = start_console(tmp_path, broker.api, "", "--read-only")
    try:
        assert call(f"{url}/api/info")[1]["read_only"] is True
        assert call(f"{url}/api/topics")[0] == 200
        status, body = call(f"{url}/api/topics", "POST", {"name": "nope"})
        assert status == 403 and "read-only" in body
        assert call(f"{url}/api/topics/menu?confirm=menu", "DELETE")[0] == 403
        assert call(f"{url}/api/topics/menu")[0] == 200
    finally:
        proc.stop()


def test_a_console_bound_beyond_loopback_needs_a_token(broker: BrokerProcess,
                                                       tmp_path: Path) -> None:
    done = subprocess.run(rail("console", "--broker", broker.api, "--control", "",
                               "--bind", f"0.0.0.0:{free_port()}"), capture_output=True,
                          text=True, env={**python_env(), "RAIL_CONSOLE_TOKEN": ""}, cwd=ROOT,
                          timeout=30, check=False)
    assert done.returncode == 78 and "token" in done.stderr
    proc, url = start_console(tmp_path, broker.api, "", "--token", "s3cret")
    try:
        assert call(f"{url}/api/topics", headers={"X-Rail-Console": ""})[0] == 401
        assert call(f"{url}/api/topics", headers={"Authorization": "Bearer s3cret"})[0] == 200
        with urllib.request.urlopen(f"{url}/?token=s3cret", timeout=10) as r:
            cookie = r.headers["Set-Cookie"].split(";")[0]
        assert call(f"{url}/api/topics", headers={"Cookie": cookie})[0] == 200
    finally:
        proc.stop()


def test_console_thread_serves_from_a_process_that_is_not_async(broker: BrokerProcess) -> None:
    """How rail up can serve the console: on a thread of its own, stopped by stop()."""
    thread = ConsoleThread(Settings(broker=broker.api, port=0))
    address = thread.start()
    try:
        status, topics = call(f"http://{address}/api/topics")
        assert status == 200 and "menu" in {t["name"] for t in topics["topics"]}
    finally:
        thread.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{address}/api/info", timeout=2)
    with pytest.raises(ConsoleConfigError):
        ConsoleThread(Settings(broker=broker.api, host="0.0.0.0", port=0)).start()
