"""The HTTP sink: POSTs batches of event values as a JSON array, retrying with backoff.

    config = {url = "http://127.0.0.1:9000/in", retries = 8, backoff_ms = 50,
              max_backoff_ms = 2000, timeout_s = 10, headers = {Authorization = "..."}}

A batch answered 2xx is delivered.  A 5xx, 429 or no answer is retried with a doubling
backoff (from ``backoff_ms`` up to ``max_backoff_ms``), ``retries`` times, then the task
fails (exit 1; the supervisor restarts it and the batch comes again: at-least-once).  A
4xx other than 429 means the server refuses something in the batch: the batch is split in
halves, each sent on its own, down to the single events it refuses, which are rejected
(``errors.tolerance``: the DLQ with the server's answer in ``rail.error``, or the task
stops).  The offsets are committed once every event of the batch was delivered or
dead-lettered.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import msgspec

from runtime.client import Event
from runtime.connect.api import Sink
from runtime.connect.errors import BadRecord, ConnectError, ConnectorConfigError

_encode = msgspec.json.Encoder().encode


class Refused(Exception):
    """The server answered 4xx: something in the batch is refused."""


class HttpSink(Sink):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "url" not in self.config:
            raise ConnectorConfigError(f"connectors.{self.name}.config.url: the URL to POST "
                                       "to is required")
        self.url = str(self.config["url"])
        self.retries = int(self.config.get("retries", 8))
        self.backoff_s = float(self.config.get("backoff_ms", 50)) / 1000
        self.max_backoff_s = float(self.config.get("max_backoff_ms", 2000)) / 1000
        self.timeout_s = float(self.config.get("timeout_s", 10))
        self.headers = {"Content-Type": "application/json",
                        **{str(k): str(v) for k, v in self.config.get("headers", {}).items()}}
        self.rejected: list[tuple[Event, BadRecord]] = []

    def check(self, event: Event) -> None:
        try:
            _encode(event.value)
        except (TypeError, msgspec.EncodeError) as exc:
            raise BadRecord(f"value is not JSON-encodable: {exc}") from None

    def put(self, events: list[Event], next_offsets: dict[tuple[str, int], int]) -> None:
        self.rejected = []
        self._deliver(events)

    def take_rejected(self) -> list[tuple[Event, BadRecord]]:
        rejected, self.rejected = self.rejected, []
        return rejected

    def _deliver(self, events: list[Event]) -> None:
        try:
            self._post(events)
        except Refused as exc:
            if len(events) == 1:
                self.rejected.append((events[0], BadRecord(f"the server refused it: {exc}")))
                return
            half = len(events) // 2
            self._deliver(events[:half])
            self._deliver(events[half:])

    def _post(self, events: list[Event]) -> None:
        body = b"[" + b",".join(_encode(e.value) for e in events) + b"]"
        backoff = self.backoff_s
        for attempt in range(self.retries + 1):
            problem = self._try(body)
            if not problem:
                return
            if attempt < self.retries:
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
        raise ConnectError(f"sink {self.name}: {self.url} failed {self.retries + 1} times, "
                           f"last: {problem}")

    def _try(self, body: bytes) -> str:
        """"" once delivered; else what went wrong (to retry); raises Refused on a 4xx."""
        request = urllib.request.Request(self.url, data=body, headers=self.headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                reply.read()
                return ""
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode(errors="replace")
            if 400 <= exc.code < 500 and exc.code != 429:
                raise Refused(f"HTTP {exc.code} {detail}") from None
            return f"HTTP {exc.code} {detail}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
