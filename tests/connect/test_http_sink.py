"""The HTTP sink against a server that fails half the time: every event is delivered, the
ones the server refuses (poison) end in the DLQ with the server's answer."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from runtime.client import Producer
from tests.connect.tasks import Task, read_topic
from tests.helpers import wait_for


class FlakyServer(ThreadingHTTPServer):
    """Answers 503 to half the requests at random; 400 to a batch holding a poison event;
    else keeps the batch and answers 200."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.rng = random.Random(3)
        self.received: list[dict] = []
        self.failures = 0
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server: FlakyServer

    def do_POST(self) -> None:  # the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            if self.server.rng.random() < 0.5:
                self.server.failures += 1
                return self.answer(503, b"try again")
            if any(v.get("poison") for v in body):
                return self.answer(400, b"poison inside")
            self.server.received.extend(body)
        self.answer(200, b"ok")

    def answer(self, code: int, text: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args: object) -> None:
        pass


def test_an_http_sink_delivers_everything_through_failures_and_dead_letters_poison(
        broker, tmp_path):
    server = FlakyServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    poison = set(range(7, 300, 29))
    with Producer(broker.api) as producer:
        for i in range(300):
            producer.send("out", {"i": i, "poison": i in poison})
    entry = {"name": "hook", "kind": "sink", "class": "http", "topics": ["out"],
             "batch": 50, "linger_ms": 5, "errors": {"tolerance": "all"},
             "config": {"url": f"http://127.0.0.1:{server.server_port}/in", "retries": 20,
                        "backoff_ms": 1, "max_backoff_ms": 20}}
    task = Task(entry, broker.api, tmp_path / "hook.log")
    try:
        wait_for(lambda: len(read_topic(broker.api, "out.dlq")) >= len(poison)
                 and len({v["i"] for v in server.received}) >= 300 - len(poison),
                 30, 0.1, "every event delivered or dead-lettered")
    finally:
        task.stop()
        server.shutdown()
        server.server_close()
    assert task.proc.returncode == 0, task.log()
    assert server.failures > 10, "the server did not fail often enough to test retries"
    assert sorted(v["i"] for v in server.received) == sorted(set(range(300)) - poison)
    dead = read_topic(broker.api, "out.dlq")
    assert sorted(e.value["i"] for e in dead) == sorted(poison)
    assert all("HTTP 400 poison inside" in e.headers["rail.error"] for e in dead)
