"""The live supervision tree: supervisor → brokerd and workers → replicas.

Built from the supervisor's ``status`` (what ``rail status`` shows), plus what the console
adds from its own scrapes: events/s (the change of each ``processed`` count between two
scrapes) and each replica's last exit reason, read from the last line the supervisor wrote
to the worker's log when that process ended (``rail logs`` shows the same line).  The exit
reason needs the console on the supervisor's machine; elsewhere it is left empty.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from runtime import control

TAIL_BYTES = 256 * 1024  # the end of a worker's log searched for its replicas' last exits
_EXIT = re.compile(rb"^(?P<name>[^\s|]+)\.(?P<replica>\d+) \| (?P<when>\S+ \S+) rail: pid "
                   rb"(?P<pid>\d+) exited with (?P<how>.+)$", re.MULTILINE)


def last_exits(logs: Path, worker: str) -> dict[int, dict[str, Any]]:
    """``{replica: {"pid", "how", "at"}}``: how each replica's last process ended."""
    path = logs / f"{worker}.log"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - TAIL_BYTES))
            tail = f.read()
    except OSError:
        return {}
    exits: dict[int, dict[str, Any]] = {}
    for m in _EXIT.finditer(tail):
        if m["name"].decode(errors="replace") == worker:
            exits[int(m["replica"])] = {"pid": int(m["pid"]), "how": m["how"].decode(
                errors="replace").strip(), "at": m["when"].decode()}
    return exits


class Tree:
    """Turns successive ``status`` replies into tree snapshots with rates.  Not
    thread-safe: one scraper owns it."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._last: dict[str, tuple[float, int]] = {}  # "worker" / "worker.N.pid" -> (t, n)

    def fetch(self) -> dict[str, Any]:
        """One snapshot (blocking: run it off the event loop)."""
        status = control.call(self.endpoint, control.Status(), timeout_s=5.0)
        return self.snapshot(status, time.monotonic())

    def snapshot(self, status: dict[str, Any], now: float) -> dict[str, Any]:
        logs = Path(status["logs"])
        seen: dict[str, tuple[float, int]] = {}
        workers = []
        for w in status["workers"]:
            exits = last_exits(logs, w["name"])
            w = dict(w, events_per_s=self._rate(w["name"], w["processed"], now, seen))
            w["processes"] = [self._replica(w["name"], r, exits.get(r["replica"]), now, seen)
                              for r in w["processes"]]
            workers.append(w)
        self._last = seen
        return {"supervisor": {"pid": status["pid"], "uptime_s": status["uptime_s"],
                               "stopping": status["stopping"], "control": self.endpoint},
                "broker": status["broker"], "workers": workers, "at": time.time()}

    def _replica(self, worker: str, r: dict[str, Any], last_exit: dict[str, Any] | None,
                 now: float, seen: dict[str, tuple[float, int]]) -> dict[str, Any]:
        handling = r.get("handling")
        key = f"{worker}.{r['replica']}.{r['pid']}"
        return dict(r, last_exit=last_exit,
                    events_per_s=self._rate(key, r["processed"], now, seen),
                    event_age_s=None if handling is None else handling["for_s"])

    def _rate(self, key: str, count: int | None, now: float,
              seen: dict[str, tuple[float, int]]) -> float | None:
        if count is None:
            return None
        seen[key] = (now, count)
        before = self._last.get(key)
        if before is None or now - before[0] <= 0 or count < before[1]:
            return None
        return (count - before[1]) / (now - before[0])


def restart(endpoint: str, name: str) -> dict[str, Any]:
    return control.call(endpoint, control.Restart(name=name))


def scale(endpoint: str, name: str, replicas: int) -> dict[str, Any]:
    return control.call(endpoint, control.Scale(name=name, replicas=replicas))
