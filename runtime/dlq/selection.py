"""Which dead letters a ``rail dlq`` command is about."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from brokerd import protocol as p
from runtime.client import Event
from runtime.dlq.letters import header, text


@dataclass
class Selection:
    """Which dead letters a command is about; every field left empty selects all.

    ``offsets`` is an inclusive ``(first, last)`` with None for an open end.  ``error`` is
    a substring of the ``rail.error`` header, ``match`` one of the key or value as text.
    ``again`` includes dead letters already replayed."""

    partition: int | None = None
    offsets: tuple[int | None, int | None] | None = None
    error: str | None = None
    match: str | None = None
    again: bool = False

    @property
    def filtered(self) -> bool:
        """True when the selection looks at content, not only at positions."""
        return self.error is not None or self.match is not None

    def bounds(self, info: p.PartitionInfo) -> tuple[int, int]:
        """The offsets ``[lo, hi)`` of a partition that this selection covers."""
        first, last = self.offsets or (None, None)
        lo = info.start_offset if first is None else max(first, info.start_offset)
        hi = info.end_offset if last is None else min(last + 1, info.end_offset)
        return lo, max(lo, hi)

    def selects(self, event: Event) -> bool:
        """True when ``event`` is in the partition, offsets and content selected."""
        if self.partition is not None and event.partition != self.partition:
            return False
        first, last = self.offsets or (None, None)
        if (first is not None and event.offset < first) or (
                last is not None and event.offset > last):
            return False
        return self.matches(event)

    def matches(self, event: Event) -> bool:
        """True when ``event``'s content matches ``error`` and ``match``."""
        if self.error is not None and self.error not in (header(event, "rail.error") or ""):
            return False
        if self.match is not None:
            shown = f"{_shown(event.key)} {_shown(event.value)}"
            return self.match in shown
        return True


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, str)):
        return text(value)
    return json.dumps(value, ensure_ascii=False, default=text)  # as ``rail dlq list`` shows it


def parse_offsets(spec: str) -> tuple[int | None, int | None]:
    """``A..B`` (inclusive), ``A..``, ``..B`` or ``A`` as ``(first, last)``."""
    first, dots, last = spec.partition("..")
    try:
        lo = int(first) if first else None
        hi = (int(last) if last else None) if dots else lo
    except ValueError:
        raise ValueError(f"offsets {spec!r}: write them as A..B, A.., ..B or A") from None
    if (lo is not None and lo < 0) or (hi is not None and hi < 0) or (
            lo is not None and hi is not None and hi < lo):
        raise ValueError(f"offsets {spec!r}: need 0 <= A <= B")
    return lo, hi
