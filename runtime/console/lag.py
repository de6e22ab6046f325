"""Lag history: what each group's lag was over the last hour, kept by the console from its
own scrapes (the broker keeps no history).

With a file (``rail up --console`` keeps one in its data folder, ``rail console --history
FILE``), each scrape's lags are appended to it as one JSON line and a restarted console
reads back the last hour: history is not lost on a restart, the complaint users of other
consoles have.  The file is rewritten with only the last hour once it holds two.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec

WINDOW_S = 3600.0
log = logging.getLogger("rail.console")


class _Line(msgspec.Struct, array_like=True):
    t: float
    lags: dict[str, int]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Line).decode


class LagHistory:
    """Points ``(time_s, lag)`` per group and per ``group/topic``, oldest dropped past the
    window.  Used from the event loop only."""

    def __init__(self, window_s: float = WINDOW_S, max_points: int = 3600,
                 path: Path | None = None) -> None:
        self.window_s = window_s
        self.max_points = max_points
        self._series: dict[str, deque[tuple[float, int]]] = {}
        self.path = path
        self._file_since = 0.0  # the oldest line's time in the file
        if path is not None:
            self._load(path)

    def record(self, groups: list[dict[str, Any]], now: float | None = None) -> None:
        now = time.time() if now is None else now
        lags: dict[str, int] = {}
        for g in groups:
            per_topic: dict[str, int] = {}
            for part in g["partitions"]:
                per_topic[part["topic"]] = per_topic.get(part["topic"], 0) + part["lag"]
            lags[g["group"]] = g["lag"]
            for topic, lag in per_topic.items():
                lags[f"{g['group']}/{topic}"] = lag
        for key, lag in lags.items():
            self._add(key, now, lag)
        self._expire(now)
        if self.path is not None:
            self._append(_Line(now, lags), now)

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

    # -- the file -------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        """The last hour of a file an earlier console wrote; a torn or foreign line (a
        crash mid-write) ends the reading there."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        now = time.time()
        for raw in data.splitlines():
            try:
                line = _decode(raw)
            except msgspec.DecodeError:
                log.warning("%s: an unreadable line: the history stops before it", path)
                break
            self._file_since = self._file_since or line.t
            if line.t >= now - self.window_s:
                for key, lag in line.lags.items():
                    self._add(key, line.t, lag)
        self._expire(now)

    def _append(self, line: _Line, now: float) -> None:
        assert self.path is not None
        try:
            if self._file_since and self._file_since < now - 2 * self.window_s:
                self._rewrite()  # memory holds this scrape's line already
                return
            with open(self.path, "ab") as f:
                f.write(_encode(line) + b"\n")
            self._file_since = self._file_since or now
        except OSError as exc:  # the chart goes on from memory
            log.warning("cannot keep the lag history in %s: %s", self.path, exc)

    def _rewrite(self) -> None:
        """Only the last hour, one line per scrape time, replacing the file atomically."""
        assert self.path is not None
        at: dict[float, dict[str, int]] = {}
        for key, series in self._series.items():
            for t, lag in series:
                at.setdefault(t, {})[key] = lag
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(b"".join(_encode(_Line(t, at[t])) + b"\n" for t in sorted(at)))
        os.replace(tmp, self.path)
        self._file_since = min(at, default=0.0)
