"""The broker's Prometheus /metrics, scraped over real HTTP from a real broker, and its
chunked rendering checked against prometheus_client's whole-family rendering."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from brokerd import protocol as p
from brokerd.metrics import TOPIC_FAMILIES, ChunkedExposition, topic_samples
from tests.helpers import start_broker
from tests.integration.wire import RawClient


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_show_offsets_lag_and_errors_with_kafka_exporter_names(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "data", "--metrics", "127.0.0.1:0")
    try:
        found = re.search(r"metrics=(\S+)", broker.ready_line)
        assert found, broker.ready_line
        address = found.group(1)
        with RawClient(broker.api) as raw:
            raw.ok("create_topic", topic="orders", partitions=2)
            for i in range(5):
                raw.ok("produce", topic="orders", partition=0,
                       records=msgspec.Raw(msgspec.msgpack.encode([[i]])))
            member = raw.ok("join", group="kitchen", topics=["orders"],
                            session_timeout_ms=30_000)["member_id"]
            raw.ok("commit", group="kitchen", member_id=member, offsets=[["orders", 0, 3]])
            assert raw.call("fetch", topic="nope", partition=0, offset=0)["code"] == \
                "UNKNOWN_TOPIC"
        m = scrape(address)
        p0 = (("partition", "0"), ("topic", "orders"))
        assert m[("rail_topic_partition_current_offset", p0)] == 5
        assert m[("rail_topic_partition_oldest_offset", p0)] == 0
        group_p0 = (("consumergroup", "kitchen"), ("partition", "0"), ("topic", "orders"))
        assert m[("rail_consumergroup_current_offset", group_p0)] == 3
        assert m[("rail_consumergroup_lag", group_p0)] == 2
        assert m[("rail_consumergroup_lag_sum", (("consumergroup", "kitchen"),
                                                 ("topic", "orders")))] == 2
        assert m[("rail_consumergroup_members", (("consumergroup", "kitchen"),))] == 1
        assert m[("rail_broker_errors_total", (("code", "UNKNOWN_TOPIC"),))] == 1
        assert m[("rail_broker_records_in_total", ())] == 5
        assert m[("rail_broker_op_requests_total", (("op", "produce"),))] == 5
        assert m[("rail_broker_op_requests_total", (("op", "join"),))] == 1
        assert m[("rail_broker_rebalances_total", ())] >= 1
        assert m[("rail_broker_parked_requests", ())] == 0
        with RawClient(broker.api) as raw:  # acks=all: each produce waits for an fsync round
            for i in range(3):
                raw.ok("produce", topic="orders", partition=1, acks="all",
                       records=msgspec.Raw(msgspec.msgpack.encode([[i]])))
        m = scrape(address)  # the topic's text was kept from the last scrape: now redone
        p1 = (("partition", "1"), ("topic", "orders"))
        assert m[("rail_topic_partition_current_offset", p1)] == 3
        assert m[("rail_topic_partition_current_offset", p0)] == 5
        assert m[("rail_consumergroup_lag", group_p0)] == 2
        fsyncs = m[("rail_broker_fsync_seconds_count", ())]
        assert fsyncs >= 3 and m[("rail_broker_fsync_seconds_sum", ())] > 0
        assert m[("rail_broker_fsync_seconds_bucket", (("le", "+Inf"),))] == fsyncs
        assert m[("rail_broker_group_commit_produces_sum", ())] >= 3
        try:
            urllib.request.urlopen(f"http://{address}/other", timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        else:
            raise AssertionError("only /metrics is served")
    finally:
        broker.stop()


def whole_families(chunks: list[tuple[str, p.TopicInfo]]) -> bytes:
    """generate_latest of TOPIC_FAMILIES made whole, each with every topic's samples."""
    registry = CollectorRegistry(auto_describe=False)
    families = [GaugeMetricFamily(name, help, labels=labels)
                for name, help, labels in TOPIC_FAMILIES]
    for name, topic in chunks:
        for family, samples in zip(families, topic_samples(name, topic), strict=True):
            for values, value in samples:
                family.add_metric(values, value)

    class Families:
        def collect(self) -> list[GaugeMetricFamily]:
            return families
    registry.register(Families())  # type: ignore[arg-type]
    return generate_latest(registry)


def test_chunked_text_is_byte_for_byte_prometheus_clients_as_topics_change() -> None:
    def topic(name: str, ends: list[int], isr: list[int]) -> tuple[str, p.TopicInfo]:
        parts = [p.PartitionInfo(partition=i, start_offset=0, end_offset=end, size_bytes=end * 9,
                                 replicas=[1, 2], isr=isr) for i, end in enumerate(ends)]
        return name, p.TopicInfo(name=name, partitions=parts, config={})
    exposition = ChunkedExposition(TOPIC_FAMILIES, topic_samples)
    for scrape_chunks in ([topic("a", [1, 2], [1, 2]), topic("b", [5], [1])],
                          [topic("a", [1, 2], [1, 2]), topic("b", [6], [1])],  # b moved
                          [topic("b", [6], [1, 2]), topic("c\"\\", [0], [])],  # a deleted
                          [topic("b", [6], [1, 2]), topic("c\"\\", [0], [])]):  # all kept
        assert exposition.render(scrape_chunks) == whole_families(scrape_chunks)
    assert b'rail_topic_partition_current_offset{partition="0",topic="b"} 6.0' in \
        whole_families(scrape_chunks)
