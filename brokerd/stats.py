"""Counters for ``stats``: totals, and rates over the last ten seconds or so."""

from __future__ import annotations

import bisect
import os
import resource
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from brokerd.memory import rss_bytes
from brokerd.protocol import ERROR_CODES

if TYPE_CHECKING:
    from brokerd.handlers import Handlers as Broker

SAMPLE_EVERY_S = 1.0
WINDOW = 10
# Every counter ``stats`` reports, present from the start (at 0) so dashboards and
# clients never have to tell "absent" from "none yet".
COUNTERS = ("requests", "bad_frames", "replies_dropped", "ingest_records", "ingest_invalid",
            "ingest_failed", "fsync_failures", "records_discarded", "flush_deferred",
            *(f"error.{code}" for code in ERROR_CODES))


# Histogram buckets (upper bounds), Prometheus' ``le``: fsync seconds, and produce requests
# one fsync round made durable (group commit).
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GROUP_COMMIT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Observations counted into fixed buckets, with their sum: what a Prometheus
    histogram exposes.  Main thread only."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def report(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "counts": list(self.counts),
                "sum": self.sum, "count": sum(self.counts)}


class Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self.ops: Counter[str] = Counter()  # requests by op
        self.fsync_seconds = Histogram(FSYNC_BUCKETS)
        self.group_commit = Histogram(GROUP_COMMIT_BUCKETS)
        self._turn = 0
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=WINDOW + 1)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def next_turn(self) -> int:
        self._turn += 1
        return self._turn

    def report(self, broker: Broker) -> dict[str, Any]:
        topics = {}
        totals = {"records_in": 0, "bytes_in": 0, "records_out": 0, "bytes_out": 0}
        for name, topic in sorted(broker.topics.topics.items()):
            parts = []
            for i, (plog, c) in enumerate(zip(topic.partitions, topic.counters)):
                parts.append({"partition": i, "start_offset": plog.start_offset,
                              "end_offset": plog.end_offset, "size_bytes": plog.size_bytes,
                              "segments": len(plog.segments), "records_in": c.records_in,
                              "bytes_in": c.bytes_in, "records_out": c.records_out,
                              "bytes_out": c.bytes_out,
                              **({} if plog.high_watermark is None
                                 else {"high_watermark": plog.high_watermark})})
                for k in totals:
                    totals[k] += getattr(c, k)
            topics[name] = parts
        return {
            "uptime_s": round(time.monotonic() - self.started, 3),
            "pid": os.getpid(),
            "rss_bytes": rss_bytes(),
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "counts": dict(self.counts),
            "totals": totals,
            "rates_per_s": self._rates(totals),
            "topics": topics,
            "groups": len(broker.coordinator.groups),
            "requests_by_op": dict(self.ops),
            "rebalances": broker.coordinator.rebalances,
            "parked": broker.waiting.parked(),
            "histograms": {"fsync_seconds": self.fsync_seconds.report(),
                           "group_commit_produces": self.group_commit.report()},
            "waiting_durable": len(broker.acks.pending),
            "open_files": _open_files(),
            "max_open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "memory_trims": broker.memory.trims,
            "endpoints": {"api": broker.endpoints[0], "ingest": broker.endpoints[1]},
            **({} if broker.cluster is None else {"cluster": {
                "broker_id": broker.cluster.id, "controller": broker.cluster.controller_id,
                "fenced": broker.cluster.fenced, "withdrawn": broker.cluster.withdrawn}}),
        }

    def _rates(self, totals: dict[str, int]) -> dict[str, float]:
        now = time.monotonic()
        if not self._samples or now - self._samples[-1][0] >= SAMPLE_EVERY_S:
            self._samples.append((now, dict(totals)))
        then, old = self._samples[0]
        span = now - then
        if span <= 0:
            return {k: 0.0 for k in totals}
        return {k: round((totals[k] - old[k]) / span, 1) for k in totals}


def _open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1
