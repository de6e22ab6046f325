"""The JSONL file sink: each event's value as one JSON line, files rolled by size or age.

    config = {path = "out/orders.jsonl", roll_mb = 64, roll_s = 3600}

Lines go to ``path``; once it holds ``roll_mb`` or is ``roll_s`` old, it is renamed to
``path.<UTC timestamp>`` and a new one started.  Each ``put`` is written, flushed and
fsynced before the group's offsets are committed: at-least-once (a crash after the fsync
and before the commit writes that batch again).  A tombstone (nil value) writes ``null``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO, Any

import msgspec

from runtime.client import Event
from runtime.connect.api import Sink
from runtime.connect.errors import BadRecord, ConnectorConfigError

_encode = msgspec.json.Encoder().encode


class JsonlSink(Sink):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "path" not in self.config:
            raise ConnectorConfigError(f"connectors.{self.name}.config.path: the file to "
                                       "write is required")
        self.path = Path(self.config["path"])
        if self.tasks > 1:  # each task its own file
            self.path = self.path.with_name(f"{self.path.name}.task{self.task}")
        self.roll_bytes = int(float(self.config.get("roll_mb", 64)) * 1024 * 1024)
        self.roll_s = float(self.config.get("roll_s", 3600))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh: IO[bytes] = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self.opened_at = time.time()

    def check(self, event: Event) -> None:
        try:
            _encode(event.value)
        except (TypeError, msgspec.EncodeError) as exc:
            raise BadRecord(f"value is not JSON-encodable: {exc}") from None

    def put(self, events: list[Event], next_offsets: dict[tuple[str, int], int]) -> None:
        self.fh.write(b"".join(_encode(e.value) + b"\n" for e in events))
        self.fh.flush()
        os.fsync(self.fh.fileno())
        if self.fh.tell() >= self.roll_bytes or time.time() - self.opened_at >= self.roll_s:
            self.roll()

    def roll(self) -> None:
        self.fh.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.{stamp}-{n}")
            n += 1
        os.replace(self.path, target)
        self.fh = open(self.path, "ab")  # noqa: SIM115
        self.opened_at = time.time()

    def close(self) -> None:
        self.fh.close()
