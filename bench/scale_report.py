"""The scale benchmark's report: medians over runs, issue 11's targets, the tables.

Rows are dicts of one point (``sweep``, ``size`` and figures); a run is a list of rows in
the same order as every other run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__:
    from .common import median, print_table
else:  # run as a script, or imported with bench/ on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import median, print_table


def medians(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (sweep, size): the median of each figure over the runs that have it;
    the failures of every run, each marked with its run."""
    rows = []
    for i, first in enumerate(runs[0]):
        points = [run[i] for run in runs]
        row: dict[str, Any] = {"sweep": first["sweep"], "size": first["size"], "runs": len(points)}
        keys = {k for point in points for k in point} - {"sweep", "size", "failures"}
        for key in sorted(keys):
            values = [v for point in points if isinstance(v := point.get(key), (int, float))
                      and not isinstance(v, bool)]
            if values:
                row[key] = median(values)
        failures = [f"run {r}: {f}" for r, point in enumerate(points, 1) for f in point.get("failures", [])]
        if failures:
            row["failures"] = failures
        rows.append(row)
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


THROUGHPUT = [("sweep", "sweep"), ("size", "size"), ("produce", "produce/s"), ("redis_produce", "redis produce/s"),
              ("produce_x", "x redis"), ("consume", "consume/s"), ("redis_consume", "redis consume/s"),
              ("consume_x", "x redis"), ("produce_us", "µs/ev produce"), ("consume_us", "µs/ev consume"),
              ("produce_client_us", "client µs/ev prod"), ("consume_client_us", "client µs/ev cons"),
              ("events_per_request", "events/request"),
              ("redis_produce_us", "redis µs/ev prod"), ("redis_consume_us", "redis µs/ev cons"), ("ooo", "OOO")]
RESOURCES = [("sweep", "sweep"), ("size", "size"), ("rss_mb", "RSS MB"), ("rss_restart_mb", "RSS restarted"),
             ("redis_rss_mb", "redis RSS"), ("idle_cpu_pct", "idle CPU %"), ("idle_s", "idle s"),
             ("redis_idle_cpu_pct", "redis idle %"), ("fds", "fds"), ("redis_fds", "redis fds"),
             ("restart_s", "restart s"), ("redis_restart_s", "redis restart s"), ("metadata_ms", "metadata ms"),
             ("metadata_decoded_ms", "+decode ms"), ("describe_ms", "describe ms"),
             ("describe_decoded_ms", "+decode ms"), ("heartbeats_per_s", "heartbeats/s"),
             ("idle_us_per_heartbeat", "idle µs/hb"), ("setup_s", "setup s"), ("cpu_wait_pct", "CPU wait %")]


def _find(rows: list[dict[str, Any]], sweep: str, size: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["sweep"] == sweep and r["size"] == size), None)


def targets(rows: list[dict[str, Any]], runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Issue 11's targets on the medians.  A figure missing because its point failed is a
    FAIL; one missing because its point was not run is "-"."""
    out = []

    def check(name: str, point: dict[str, Any] | None, value: float | None, limit: str,
              ok: bool | None, shown: str) -> None:
        if value is None:
            failed = point is not None and point.get("failures")
            out.append({"target": name, "value": "failed" if failed else "-", "limit": limit,
                        "result": "FAIL" if failed else "-"})
        else:
            out.append({"target": name, "value": shown, "limit": limit, "result": "PASS" if ok else "FAIL"})

    p10, p1k, p10k, g1k = (_find(rows, "partitions", 10), _find(rows, "partitions", 1000),
                           _find(rows, "partitions", 10_000), _find(rows, "groups", 1000))
    share = None
    if p10 and p1k and p10.get("produce") and p1k.get("produce"):
        share = p1k["produce"] / p10["produce"]
    check("keyed produce, 1,000 / 10 partitions", p1k if p10 else None, share, ">= 50%",
          share is not None and share >= 0.5, f"{share:.0%}" if share is not None else "")
    ooo = sum(r.get("ooo", 0) for run in runs for r in run)
    check("OUT_OF_ORDER_SEQUENCE, every produce of every run", None, ooo, "0", ooo == 0, f"{ooo}")
    for key, name, limit, bound, fmt in (("idle_cpu_pct", "10,000 partitions: idle CPU", "< 0.5 %", 0.5, "{:.2f} %"),
                                         ("rss_mb", "10,000 partitions: RSS", "< 150 MB", 150, "{:.0f} MB"),
                                         ("restart_s", "10,000 partitions: restart after kill -9", "<= 3 s", 3.0,
                                          "{:.2f} s"),
                                         ("metadata_ms", "10,000 partitions: metadata", "<= 50 ms", 50, "{:.1f} ms")):
        value = p10k.get(key) if p10k else None
        ok = value is not None and (value <= bound if limit.startswith("<=") else value < bound)
        idle = f" (over {p10k['idle_s']:g} s)" if p10k and key == "idle_cpu_pct" and "idle_s" in p10k else ""
        check(name + idle, p10k, value, limit, ok, fmt.format(value) if value is not None else "")
    value = g1k.get("idle_cpu_pct") if g1k else None
    idle = f" (over {g1k['idle_s']:g} s)" if g1k and "idle_s" in g1k else ""
    check("1,000 groups heartbeating: idle CPU" + idle, g1k, value, "< 2 %", value is not None and value < 2.0,
          f"{value:.2f} %" if value is not None else "")
    failures = sum(len(r.get("failures", [])) for run in runs for r in run)
    check("no failure (crash, error, timeout) at any point of any run", None, failures, "0", failures == 0,
          f"{failures}")
    return out


def report(runs: list[list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    rows = medians(runs)
    for row in rows:
        row["produce_x"] = _ratio(row.get("produce"), row.get("redis_produce"))
        row["consume_x"] = _ratio(row.get("consume"), row.get("redis_consume"))
    n = len(runs)
    md = print_table(rows, THROUGHPUT, title=f"throughput and CPU per event, medians of {n} run(s)")
    md += "\n" + print_table(rows, RESOURCES, title=f"resources, medians of {n} run(s)")
    checks = targets(rows, runs)
    md += "\n" + print_table(checks, ["target", "value", "limit", "result"], title="targets (issue 11)")
    every = [{"run": i, **r} for i, run in enumerate(runs, 1) for r in run]
    md += "\n" + print_table(every, [("run", "run"), *THROUGHPUT[:3], THROUGHPUT[5], ("idle_cpu_pct", "idle %"),
                                     ("rss_mb", "RSS MB"), ("restart_s", "restart s"), ("metadata_ms", "meta ms"),
                                     ("ooo", "OOO"), ("load_avg_1m", "load"), ("cpu_wait_pct", "CPU wait %")],
                             title="every run")
    failures = [{"sweep": r["sweep"], "size": r["size"], "failure": f} for r in rows for f in r.get("failures", [])]
    if failures:
        md += "\n" + print_table(failures, ["sweep", "size", "failure"], title="failures")
    return rows, checks, md
