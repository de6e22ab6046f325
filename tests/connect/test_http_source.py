"""The HTTP source answers 200 only after the broker acknowledged the events, 4xx for bad
input (writing nothing), 503 while the broker is down."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from tests.connect.tasks import Task, count, read_topic
from tests.helpers import free_port, start_broker, wait_for


def post(url: str, body: bytes, content_type: str = "application/json",
         timeout: float = 20) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def listening(url: str) -> bool:
    try:
        return post(url, b"[]", timeout=2)[0] == 200
    except OSError:
        return False


def test_an_http_source_acks_after_the_broker_and_refuses_bad_input_writing_nothing(tmp_path):
    port = free_port()
    broker = start_broker(tmp_path / "data", api_port=free_port())
    url = f"http://127.0.0.1:{port}/events"
    entry = {"name": "web-in", "kind": "source", "class": "http", "topics": ["web"],
             "transforms": [{"type": "key", "field": "user"}],
             "config": {"listen": f"127.0.0.1:{port}", "timeout_s": 2}}
    task = Task(entry, broker.api, tmp_path / "http.log")
    try:
        wait_for(lambda: listening(url), 20, 0.1, "the HTTP source to listen")
        status, reply = post(url, json.dumps([{"user": "a", "n": 1}, {"user": "b", "n": 2}]).encode())
        assert (status, reply) == (200, {"accepted": 2})
        assert count(broker.api, "web") == 2  # acknowledged before the answer
        assert post(url, b'{"user": "a"}', "text/plain")[0] == 415
        assert post(url, b'[{"user": "a"}, {"user": ')[0] == 400
        status, reply = post(url, b'{"user": "c"}\n{"user": \n', "application/x-ndjson")
        assert status == 400 and "broken JSON" in reply["error"]
        assert post(url, b'{"nobody": 1}')[0] == 400  # the key transform finds no field
        big = b"[" + b",".join([b'{"user": "x", "pad": "' + b"y" * 1000 + b'"}'] * 21_000) + b"]"
        assert len(big) > 20 * 1024 * 1024
        assert post(url, big)[0] == 413
        assert count(broker.api, "web") == 2, "a refused request wrote something"

        api = broker.api
        broker.stop()
        started = time.monotonic()
        assert post(url, b'{"user": "d"}')[0] == 503
        assert time.monotonic() - started < 10
        broker = start_broker(tmp_path / "data", api_port=int(api.rsplit(":", 1)[1]))
        wait_for(lambda: post(url, b'{"user": "e"}')[0] == 200, 30, 0.2, "200 again")
        assert {e.key for e in read_topic(broker.api, "web")} >= {"a", "b", "e"}
    finally:
        task.stop()
        broker.stop()
    assert task.proc.returncode == 0, task.log()
