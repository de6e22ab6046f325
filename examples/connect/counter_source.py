"""An example connector: a source that counts, resuming after its last stored number.

Declared in rail.toml as ``class = "counter_source:CounterSource"`` (a module next to the
rail.toml, which is the task's working folder).  See docs/connect.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.connect import Source, SourceRecord


class CounterSource(Source):
    def open(self, offsets: dict[str, Any]) -> None:
        self.n = int(offsets.get("counter", 0))  # the last number that reached the log
        self.limit = int(self.config.get("limit", 1000))

    def records(self) -> Iterator[SourceRecord | None]:
        while True:
            if self.n >= self.limit:
                yield None  # nothing now: the runtime flushes, waits a little, asks again
                continue
            self.n += 1
            yield SourceRecord({"n": self.n}, key=str(self.n), source_partition="counter",
                               source_offset=self.n)
