"""Prometheus ``/metrics`` for the supervisor: every worker's state, restarts, processes,
memory, CPU, events handled and lag, and the broker child's.

Off unless ``rail up --metrics HOST:PORT`` (or ``[supervisor] metrics``).  A scrape asks
the supervisor through its control socket with the ``status`` request ``rail status``
sends, on prometheus_client's HTTP thread: the supervisor's loop is never read from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from runtime import control

STATES = ("running", "degraded", "restarting", "stopping", "stopped", "exited", "failed")
# The handler histogram's buckets: the hosts count a call that took b bits of nanoseconds
# (under 2**b ns) in bucket b; shown from 2**10 ns (~1 µs) to 2**35 ns (~34 s).
HANDLER_BITS = range(10, 36)


class SupervisorCollector(Collector):
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def collect(self) -> Iterator[Metric]:
        status: dict[str, Any] = control.call(self.endpoint, control.Status(), timeout_s=10.0)
        yield from _broker_families(status["broker"])
        yield from _worker_families(status["workers"])


def _broker_families(broker: dict[str, Any]) -> Iterator[Metric]:
    up = GaugeMetricFamily("rail_supervisor_broker_up", "1 while the broker child runs")
    up.add_metric([], int(broker["state"] == "running"))
    restarts = CounterMetricFamily("rail_supervisor_broker_restarts",
                                   "Restarts of the broker child")
    restarts.add_metric([], broker["restarts"])
    yield up
    yield restarts
    if broker["rss"] is not None:
        rss = GaugeMetricFamily("rail_supervisor_broker_rss_bytes", "The broker's memory")
        rss.add_metric([], broker["rss"])
        yield rss


def _worker_families(workers: list[dict[str, Any]]) -> Iterator[Metric]:
    label = ["worker"]
    state = GaugeMetricFamily("rail_worker_state", "1 for the state each worker is in",
                              labels=["worker", "state"])
    replicas = GaugeMetricFamily("rail_worker_replicas", "Processes wanted", labels=label)
    processes = GaugeMetricFamily("rail_worker_processes", "Processes alive", labels=label)
    restarts = CounterMetricFamily("rail_worker_restarts", "Restarts of a worker's processes",
                                   labels=label)
    processed = CounterMetricFamily("rail_worker_processed",
                                    "Events handled (committed) since it was registered",
                                    labels=label)
    failed = CounterMetricFamily("rail_worker_failed", "Events sent to the dead-letter topic",
                                 labels=label)
    rss = GaugeMetricFamily("rail_worker_rss_bytes", "Memory of its processes", labels=label)
    cpu = GaugeMetricFamily("rail_worker_cpu_percent", "CPU of its processes", labels=label)
    lag = GaugeMetricFamily("rail_worker_lag", "Its group's lag", labels=label)
    for w in workers:
        name = [w["name"]]
        for each in sorted(set(STATES) | {w["state"]}):
            state.add_metric([w["name"], each], int(each == w["state"]))
        replicas.add_metric(name, w["replicas"])
        processes.add_metric(name, len(w["pids"]))
        restarts.add_metric(name, w["restarts"])
        if w["processed"] is not None:
            processed.add_metric(name, w["processed"])
        failed.add_metric(name, w["failed"])
        for family, key in ((rss, "rss"), (cpu, "cpu_percent"), (lag, "lag")):
            if w[key] is not None:
                family.add_metric(name, w[key])
    yield from (state, replicas, processes, restarts, processed, failed, rss, cpu, lag)
    yield _handler_histogram(workers)


def _handler_histogram(workers: list[dict[str, Any]]) -> Metric:
    """``rail_worker_handler_seconds``: how long handler calls took, per worker (all its
    replicas, the exited ones' calls included)."""
    family = HistogramMetricFamily("rail_worker_handler_seconds",
                                   "Seconds each handler call took", labels=["worker"])
    for w in workers:
        times = w.get("handler")
        if not times:
            continue
        counts = times["counts"]
        buckets = [(repr(2**bits / 1e9), sum(counts[:bits + 1])) for bits in HANDLER_BITS]
        buckets.append(("+Inf", sum(counts)))
        family.add_metric([w["name"]], buckets, times["sum_ns"] / 1e9)
    return family


def serve(address: str, control_endpoint: str) -> Any:
    """Serve ``/metrics`` on ``address`` (``host:port``; port 0: a free one); returns the
    HTTP server (``server_address``, ``shutdown()``)."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(control_endpoint))
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server
