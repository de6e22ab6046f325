"""Shared helpers for Rail's benchmarks: ports, timing, child processes, tables.

Benchmarks compare Rail with real peers (Redis, ZeroMQ, Dramatiq) in one run,
so every workload runs its clients in processes separate from the servers.
Nothing here holds state; every process started here is stopped by pid.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from pathlib import Path

import psutil

Row = Mapping[str, Any]
Column = str | tuple[str, str]

_SPAWN = multiprocessing.get_context("spawn")


# --- ports and waiting -------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Poll `predicate` until it is true; raise TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# --- statistics --------------------------------------------------------------


def median(xs: Iterable[float]) -> float:
    """Median of the values; NaN when there are none."""
    values = list(xs)
    return float(statistics.median(values)) if values else math.nan


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest rank."""
    if not sorted_xs:
        return math.nan
    rank = math.ceil(q / 100.0 * len(sorted_xs))
    return float(sorted_xs[min(max(rank, 1), len(sorted_xs)) - 1])


def latency_summary_ms(latencies_ns: Iterable[int]) -> dict[str, float]:
    """p50/p99/p99.9/max in milliseconds of latencies given in nanoseconds."""
    ordered = sorted(latencies_ns)
    ms = [x / 1e6 for x in ordered]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "p999_ms": percentile(ms, 99.9),
        "max_ms": ms[-1] if ms else math.nan,
    }


def run_repeated(fn: Callable[..., dict[str, Any]], runs: int = 3, **kwargs: Any) -> list[dict[str, Any]]:
    """Call `fn(**kwargs)` `runs` times; return its result dicts, each with `run` set."""
    rows = []
    for run in range(1, runs + 1):
        row = dict(fn(**kwargs))
        row["run"] = run
        rows.append(row)
    return rows


def median_row(rows: Sequence[Row]) -> dict[str, Any]:
    """One row: the median of each numeric field; other fields from the first row."""
    if not rows:
        return {}
    out: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [r.get(key) for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        out[key] = median(values) if numeric else first  # type: ignore[arg-type]
    out.pop("run", None)
    out["runs"] = len(rows)
    return out


# --- formatting --------------------------------------------------------------


def format_rate(x: float, unit: str = "/s") -> str:
    """Human rate: 10.2M/s, 135k/s, 5.52k/s, 870/s."""
    if x is None or math.isnan(x):
        return "-"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            scaled = x / factor
            digits = 0 if abs(scaled) >= 100 else 1 if abs(scaled) >= 10 else 2
            return f"{scaled:.{digits}f}{suffix}{unit}"
    return f"{x:.0f}{unit}"


def format_cell(value: Any) -> str:
    """Text of one table cell: thousands separators, 3 significant digits below 10."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _column_key_header(column: Column) -> tuple[str, str]:
    return column if isinstance(column, tuple) else (column, column)


def print_table(rows: Sequence[Row], columns: Sequence[Column], title: str | None = None) -> str:
    """Print rows as an aligned text table; return the same table as markdown.

    `columns` are keys of the rows, or (key, header) pairs. Numbers are right
    aligned, text left aligned; a missing value shows as "-".
    """
    pairs = [_column_key_header(c) for c in columns]
    headers = [h for _, h in pairs]
    cells = [[format_cell(row.get(k)) for k, _ in pairs] for row in rows]
    numeric = [
        any(isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool) for row in rows)
        for k, _ in pairs
    ]
    widths = [max([len(h)] + [len(line[i]) for line in cells]) for i, h in enumerate(headers)]

    def fit(text: str, i: int) -> str:
        return text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])

    if title:
        print(f"\n{title}")
    print("  ".join(fit(h, i) for i, h in enumerate(headers)))
    print("  ".join("-" * w for w in widths))
    for line in cells:
        print("  ".join(fit(text, i) for i, text in enumerate(line)))

    md = ["| " + " | ".join(headers) + " |"]
    md.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
    md += ["| " + " | ".join(line) + " |" for line in cells]
    return ("" if not title else f"**{title}**\n\n") + "\n".join(md) + "\n"


# --- timing ------------------------------------------------------------------


class Timer:
    """Wall-clock timer: `with Timer() as t: ...; t.elapsed` (seconds)."""

    def __init__(self) -> None:
        self.start_s = 0.0
        self.end_s: float | None = None

    def __enter__(self) -> Timer:
        self.start_s = time.perf_counter()
        self.end_s = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.end_s = time.perf_counter()

    @property
    def elapsed(self) -> float:
        end = self.end_s if self.end_s is not None else time.perf_counter()
        return end - self.start_s


# --- processes ---------------------------------------------------------------


def _child_main(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Body of a spawned child: run fn, send ("ok", result) or ("error", traceback)."""
    try:
        result = fn(*args, **kwargs)
    except BaseException:  # noqa: BLE001 - reported to the parent, then re-raised
        conn.send(("error", traceback.format_exc()))
        raise
    conn.send(("ok", result))
    conn.close()


class Child:
    """A function running in its own process (multiprocessing, 'spawn' context).

    `fn` must be importable (defined at module top level) and its arguments and
    result picklable. Use as a context manager so the process is always stopped.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._recv, send = _SPAWN.Pipe(duplex=False)
        self._send = send
        self._process = _SPAWN.Process(target=_child_main, args=(send, fn, args, kwargs), daemon=True)
        self._name = getattr(fn, "__name__", repr(fn))

    def start(self) -> Child:
        self._process.start()
        self._send.close()  # the child holds its own end; EOF then means it died
        return self

    @property
    def pid(self) -> int:
        assert self._process.pid is not None, "child not started"
        return self._process.pid

    def ensure_alive(self) -> None:
        """Raise RuntimeError if the process has already exited."""
        if not self._process.is_alive():
            raise RuntimeError(f"{self._name} (pid {self.pid}) exited early, exit code {self._process.exitcode}")

    def result(self, timeout: float) -> Any:
        """Wait up to `timeout` s for fn's return value; raise if it failed or died."""
        if not self._recv.poll(timeout):
            raise TimeoutError(f"{self._name} (pid {self.pid}) gave no result within {timeout:.1f}s")
        try:
            status, payload = self._recv.recv()
        except EOFError:
            self._process.join(1.0)
            raise RuntimeError(f"{self._name} (pid {self.pid}) died, exit code {self._process.exitcode}") from None
        if status == "error":
            raise RuntimeError(f"{self._name} (pid {self.pid}) failed:\n{payload}")
        self._process.join(5.0)
        return payload

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate (SIGTERM), wait, then kill; safe to call more than once."""
        if self._process.pid is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout)
        self._recv.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Child:
    """Start `fn(*args, **kwargs)` in a new process; returns the started Child."""
    return Child(fn, *args, **kwargs).start()


def run_in_process(fn: Callable[..., Any], *args: Any, timeout: float = 600.0, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)` in a new process and return its result."""
    with spawn(fn, *args, **kwargs) as child:
        return child.result(timeout)


def stop_popen(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop a subprocess by pid: SIGTERM, wait, then SIGKILL and wait."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    except ProcessLookupError:
        proc.wait(timeout)


def proc_rss_mb(pid: int, include_children: bool = False) -> float:
    """Resident memory of a process (optionally plus its children) in MiB."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    if include_children:
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    return total / 2**20


def cpu_stall_us() -> int | None:
    """Total µs some task waited for a CPU (Linux PSI); None where PSI is missing."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first.rsplit("total=", 1)[1])
