"""Prometheus ``/metrics`` for the broker, with kafka_exporter's names where they mean the
same (``rail_`` for ``kafka_``), so dashboards and alerts carry over.

Off unless ``--metrics HOST:PORT`` (or ``metrics`` in broker.toml) is given.  A scrape runs
on the HTTP server's thread and asks the broker through its own API, with the same
``stats``, ``metadata``, ``list_groups`` and ``describe_group`` requests the CLI sends: the
loop's state is never read from another thread, and an idle broker pays nothing for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import msgspec
import zmq
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from brokerd import protocol as p

log = logging.getLogger("brokerd.metrics")
SCRAPE_TIMEOUT_MS = 10_000


class BrokerScraper:
    """Asks the broker at ``api`` for what it reports and renders it in the text format.

    Thread-safe: scrapes run one at a time (the chunk caches are shared between them)."""

    def __init__(self, api: str, context: zmq.Context,
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        self.api = api
        self.context = context
        self.secure = secure  # with CURVE on: make the socket a client with the broker's key
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(p.Reply).decode
        self._topics = ChunkedExposition(TOPIC_FAMILIES, topic_samples)
        self._groups = ChunkedExposition(GROUP_FAMILIES, group_samples)
        self._lock = threading.Lock()

    def _ask(self, sock: zmq.Socket, request: p.Request) -> Any:
        sock.send(self._encode(request))
        if not sock.poll(SCRAPE_TIMEOUT_MS):
            raise TimeoutError(f"the broker did not answer {type(request).__name__} in time")
        reply = self._decode(sock.recv())
        if isinstance(reply, p.ErrorReply):  # the scrape fails: 503 with the broker's error
            raise RuntimeError(f"{reply.code}: {reply.message}")  # noqa: TRY004
        return reply

    def _send_all(self, sock: zmq.Socket, names: list[str]) -> None:
        """``describe_group`` of every group, then ``stats``, pipelined: all sent at once,
        the replies read by ``_receive_all`` (one round trip instead of one per group)."""
        for i, name in enumerate(names):
            sock.send(self._encode(p.DescribeGroup(id=i + 1, group=name)))
        sock.send(self._encode(p.Stats(id=len(names) + 1)))

    def _receive_all(self, sock: zmq.Socket, names: list[str]
                     ) -> tuple[dict[str, Any], list[p.DescribeGroupReply]]:
        """The replies to ``_send_all``: the stats and the groups' descriptions, in the
        order of ``names``; a group deleted meanwhile is left out."""
        stats: dict[str, Any] | None = None
        groups: dict[int, p.DescribeGroupReply] = {}
        for _ in range(len(names) + 1):
            if not sock.poll(SCRAPE_TIMEOUT_MS):
                raise TimeoutError("the broker did not answer describe_group and stats in time")
            reply = self._decode(sock.recv())
            if isinstance(reply, p.DescribeGroupReply):
                groups[reply.id] = reply
            elif isinstance(reply, p.StatsReply):
                stats = reply.stats
            elif isinstance(reply, p.ErrorReply) and reply.code != "UNKNOWN_GROUP":
                raise RuntimeError(f"{reply.code}: {reply.message}")
        if stats is None:
            raise RuntimeError("the broker did not send its stats")
        return stats, [groups[i] for i in sorted(groups)]

    def scrape(self) -> bytes:
        """The whole exposition: the broker's own families, then the topics', then the
        groups'.  The topics' are rendered while the broker (another process, so another
        core) works on the groups' descriptions and its stats."""
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.secure is not None:
            self.secure(sock)
        sock.connect(self.api)
        try:
            with self._lock:
                meta = self._ask(sock, p.Metadata())
                names = self._ask(sock, p.ListGroups()).groups
                self._send_all(sock, names)
                topics = self._topics.render([(t.name, t) for t in meta.topics])
                stats, groups = self._receive_all(sock, names)
                return b"".join((
                    _render(list(_broker_families(stats, meta))), topics,
                    self._groups.render([(g.group, (g.generation, len(g.members),
                                                    g.partitions)) for g in groups])))
        finally:
            sock.close(linger=0)


def _broker_families(stats: dict[str, Any], meta: p.MetadataReply) -> Iterator[Metric]:
    counts = stats["counts"]
    requests = CounterMetricFamily("rail_broker_requests", "Requests the broker read")
    requests.add_metric([], counts.get("requests", 0))
    errors = CounterMetricFamily("rail_broker_errors", "Error replies by code", labels=["code"])
    for name, value in sorted(counts.items()):
        if name.startswith("error."):
            errors.add_metric([name.removeprefix("error.")], value)
    by_op = CounterMetricFamily("rail_broker_op_requests", "Requests by op",
                                labels=["op"])
    for op, value in sorted(stats.get("requests_by_op", {}).items()):
        by_op.add_metric([op], value)
    yield requests
    yield errors
    yield by_op
    rebalances = CounterMetricFamily("rail_broker_rebalances",
                                     "Rebalances of the groups this broker coordinates")
    rebalances.add_metric([], stats.get("rebalances", 0))
    yield rebalances
    for name, help in (("fsync_seconds", ("Seconds each fsync of a partition (or of "
                                          "the offsets store) took")),
                       ("group_commit_produces", ("Produce requests one fsync round "
                                                  "made durable (group commit)"))):
        histogram = stats.get("histograms", {}).get(name)
        if histogram is not None:
            yield _histogram(f"rail_broker_{name}", help, histogram)
    for name in ("records_in", "bytes_in", "records_out", "bytes_out"):
        family = CounterMetricFamily(f"rail_broker_{name}", f"{name.replace('_', ' ')} "
                                     "over all partitions since the broker started")
        family.add_metric([], stats["totals"][name])
        yield family
    for name, help in (("ingest_records", "Records taken from the ingest socket"),
                       ("ingest_invalid", "Ingest messages dropped as malformed"),
                       ("fsync_failures", "fsyncs that failed"),
                       ("records_discarded", "Records cut after a failed fsync"),
                       ("replies_dropped", "Replies dropped on a full client queue")):
        family = CounterMetricFamily(f"rail_broker_{name}", help)
        family.add_metric([], counts.get(name, 0))
        yield family
    for name, value, help in (
            ("rail_broker_rss_bytes", stats["rss_bytes"], "Resident memory of the broker"),
            ("rail_broker_open_files", stats["open_files"], "Descriptors the broker holds"),
            ("rail_broker_max_open_files", stats["max_open_files"], "Its descriptor limit"),
            ("rail_broker_waiting_durable", stats["waiting_durable"],
             "Produces waiting for an fsync or for replicas"),
            ("rail_broker_parked_requests", stats.get("parked", 0),
             "Polls and fetches waiting for data (long polls)"),
            ("rail_brokers", max(len(meta.brokers), 1), "Brokers in the cluster (1 alone)"),
            ("rail_cluster_controller", meta.controller,
             "The controller's broker id (-1 alone)"),
            ("rail_broker_withdrawn", int(bool(stats.get("cluster", {}).get("withdrawn"))),
             "1 while this broker has withdrawn from its cluster for its disk")):
        gauge = GaugeMetricFamily(name, help)
        gauge.add_metric([], value)
        yield gauge


def _histogram(name: str, help: str, histogram: dict[str, Any]) -> Metric:
    """A Prometheus histogram from the broker's bucket counts (cumulative, as ``le``)."""
    cumulative, buckets = 0, []
    for bound, count in zip([*histogram["buckets"], float("inf")], histogram["counts"]):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    return HistogramMetricFamily(name, help, buckets=buckets, sum_value=histogram["sum"])


def _render(families: list[Metric]) -> bytes:
    """prometheus_client's text exposition of these families, in this order."""
    return generate_latest(_Families(families))


class _Families(Collector):
    """Families already made, as the registry ``generate_latest`` asks for."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


Family = tuple[str, str, list[str]]  # name, help, label names
Samples = list[tuple[list[str], float]]  # label values, value


class ChunkedExposition:
    """Gauge families whose samples come in chunks (one topic's, one group's), each
    family's part of a chunk rendered by prometheus_client again only when its samples
    changed since the last scrape: an idle topic costs a comparison instead of ~6 µs a
    sample, and a busy one re-renders its end offsets but not its start offsets.

    The text format wants a family's samples together under one HELP and TYPE, so each
    part is rendered as a family of its own and that header cut off: the text is, byte
    for byte, what ``generate_latest`` makes of the whole families.  Not thread-safe."""

    def __init__(self, families: list[Family],
                 samples: Callable[[str, Any], list[Samples]]) -> None:
        self.families = families
        self.samples = samples  # (chunk name, its input) -> each family's samples
        self.headers = [_render([GaugeMetricFamily(name, help, labels=labels)])
                        for name, help, labels in families]
        self._last: dict[str, _Chunk] = {}

    def render(self, chunks: list[tuple[str, Any]]) -> bytes:
        """The families' text for ``(name, input)`` chunks in this order; an input equal
        (``==``) to the last scrape's reuses its text."""
        last, kept, texts = self._last, {}, []
        for name, made_of in chunks:
            chunk = last.get(name)
            if chunk is None or chunk.made_of != made_of:
                chunk = self._render_chunk(name, made_of, chunk)
            kept[name] = chunk
            texts.append(chunk.texts)
        self._last = kept
        return b"".join(header + b"".join(text[i] for text in texts)
                        for i, header in enumerate(self.headers))

    def _render_chunk(self, name: str, made_of: Any, before: _Chunk | None) -> _Chunk:
        samples = self.samples(name, made_of)
        texts = []
        for i, ((family_name, help, labels), header) in enumerate(
                zip(self.families, self.headers, strict=True)):
            if before is not None and before.samples[i] == samples[i]:
                texts.append(before.texts[i])
                continue
            family = GaugeMetricFamily(family_name, help, labels=labels)
            for values, value in samples[i]:
                family.add_metric(values, value)
            texts.append(_render([family])[len(header):])
        return _Chunk(made_of, samples, texts)


class _Chunk(NamedTuple):
    made_of: Any
    samples: list[Samples]
    texts: list[bytes]


_PARTITION = ["topic", "partition"]
TOPIC_FAMILIES: list[Family] = [
    ("rail_topic_partition_current_offset", "The end offset of each partition", _PARTITION),
    ("rail_topic_partition_oldest_offset", "The start offset of each partition", _PARTITION),
    ("rail_topic_partition_size_bytes", "Bytes on disk of each partition", _PARTITION),
    ("rail_topic_partitions", "Partitions of each topic", ["topic"]),
    ("rail_topic_partition_leader", "The leader's broker id (-1: offline or alone)",
     _PARTITION),
    ("rail_topic_partition_in_sync_replica", "In-sync replicas of each partition (cluster)",
     _PARTITION),
    ("rail_topic_partition_replicas", "Replicas of each partition (cluster)", _PARTITION),
    ("rail_topic_partition_under_replicated_partition",
     "1 when fewer replicas are in sync than exist", _PARTITION),
]


def topic_samples(name: str, topic: p.TopicInfo) -> list[Samples]:
    """TOPIC_FAMILIES' samples for one topic."""
    current: Samples = []
    oldest: Samples = []
    size: Samples = []
    leader: Samples = []
    isr: Samples = []
    replicas: Samples = []
    under: Samples = []
    for part in topic.partitions:
        key = [name, str(part.partition)]
        current.append((key, part.end_offset))
        oldest.append((key, part.start_offset))
        size.append((key, part.size_bytes))
        leader.append((key, part.leader))
        if part.replicas:
            isr.append((key, len(part.isr)))
            replicas.append((key, len(part.replicas)))
            under.append((key, int(len(part.isr) < len(part.replicas))))
    return [current, oldest, size, [([name], len(topic.partitions))], leader, isr, replicas,
            under]


_GROUP_PARTITION = ["consumergroup", "topic", "partition"]
GROUP_FAMILIES: list[Family] = [
    ("rail_consumergroup_current_offset", "The committed offset of each group and partition",
     _GROUP_PARTITION),
    ("rail_consumergroup_lag", "Events not yet committed", _GROUP_PARTITION),
    ("rail_consumergroup_lag_sum", "Lag over a topic's partitions",
     ["consumergroup", "topic"]),
    ("rail_consumergroup_members", "Live members of each group", ["consumergroup"]),
    ("rail_consumergroup_generation", "Each group's generation (one more per rebalance)",
     ["consumergroup"]),
]


def group_samples(name: str, group: tuple[int, int, list[p.GroupPartition]]
                   ) -> list[Samples]:
    """GROUP_FAMILIES' samples for one group: ``(generation, members, partitions)``."""
    generation, members, partitions = group
    offset: Samples = []
    lag: Samples = []
    sums: dict[str, int] = {}
    for part in partitions:
        key = [name, part.topic, str(part.partition)]
        if part.committed is not None:
            offset.append((key, part.committed))
        lag.append((key, part.lag))
        sums[part.topic] = sums.get(part.topic, 0) + part.lag
    return [offset, lag, [([name, topic], total) for topic, total in sorted(sums.items())],
            [([name], members)], [([name], generation)]]


class MetricsServer:
    """``GET /metrics`` on ``address`` (``host:port``), on a daemon thread."""

    def __init__(self, address: str, api: str, context: zmq.Context,
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        host, _, port = address.rpartition(":")
        scraper = BrokerScraper(api, context, secure)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is here")
                    return
                try:
                    body = scraper.scrape()
                except Exception as exc:  # noqa: BLE001 - a scrape error, not a crash
                    log.warning("metrics scrape failed: %r", exc)
                    self.send_error(503, f"the broker did not answer: {exc}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self.server.daemon_threads = True
        bound_host, bound_port = self.server.server_address[:2]
        self.address = f"{bound_host!s}:{bound_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
