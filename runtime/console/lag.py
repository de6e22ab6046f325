"""Lag history: what each group's lag was over the last hour, kept by the console from its
own scrapes (the broker keeps no history; a restarted console starts a new one)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

WINDOW_S = 3600.0


class LagHistory:
    """Points ``(time_s, lag)`` per group and per ``group/topic``, oldest dropped past the
    window.  Used from the event loop only."""

    def __init__(self, window_s: float = WINDOW_S, max_points: int = 3600) -> None:
        self.window_s = window_s
        self.max_points = max_points
        self._series: dict[str, deque[tuple[float, int]]] = {}

    def record(self, groups: list[dict[str, Any]], now: float | None = None) -> None:
        now = time.time() if now is None else now
        for g in groups:
            per_topic: dict[str, int] = {}
            for part in g["partitions"]:
                per_topic[part["topic"]] = per_topic.get(part["topic"], 0) + part["lag"]
            self._add(g["group"], now, g["lag"])
            for topic, lag in per_topic.items():
                self._add(f"{g['group']}/{topic}", now, lag)
        self._expire(now)

    def _add(self, key: str, now: float, lag: int) -> None:
        series = self._series.setdefault(key, deque(maxlen=self.max_points))
        series.append((now, lag))

    def _expire(self, now: float) -> None:
        for key in list(self._series):
            series = self._series[key]
            while series and series[0][0] < now - self.window_s:
                series.popleft()
            if not series:
                del self._series[key]

    def of(self, group: str) -> dict[str, list[tuple[float, int]]]:
        """The group's total series (``""``) and one per topic it has lag on."""
        out = {"": list(self._series.get(group, ()))}
        prefix = group + "/"
        for key, series in self._series.items():
            if key.startswith(prefix):
                out[key[len(prefix):]] = list(series)
        return out
