"""Prometheus /metrics scraped over real HTTP: the broker's (and its chunked rendering checked
against prometheus_client's whole-family rendering), and the supervisor's handler latency."""

from __future__ import annotations

import os
import re
import signal
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
from tests.helpers import free_port, start_broker, wait_for
from tests.integration.test_supervisor import Rail
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


OVEN = """
import time

def handle(event, ctx):
    time.sleep(0.05)
"""


def test_handler_latency_histogram_counts_each_call_near_its_time_across_a_kill_9(
        tmp_path: Path) -> None:
    """oven handles one event at a time (timed a batch, then a call at a time), ovens four
    at once (timed from each call's start in the flight record); both sleep 50 ms."""
    rail = Rail(tmp_path)
    port = free_port()
    rail.script("oven.py", OVEN)
    rail.write_toml('[workers.oven]\nscript = "oven.py"\ntopics = ["orders"]\nbackoff_s = 0.05\n'
                    '[workers.ovens]\nscript = "oven.py"\ntopics = ["orders"]\nconcurrency = 4\n',
                    topics=f'metrics = "127.0.0.1:{port}"\n[topics.orders]\npartitions = 1\n')

    def histogram(name: str) -> dict[str, float]:
        return {dict(labels).get("le", metric.rsplit("_", 1)[-1]): value
                for (metric, labels), value in scrape(f"127.0.0.1:{port}").items()
                if metric.startswith("rail_worker_handler_seconds")
                and ("worker", name) in labels}

    def counted(name: str, at_least: int) -> dict[str, float] | None:
        h = histogram(name)
        return h if h.get("count", 0) >= at_least else None

    def near_50_ms(h: dict[str, float], calls: int) -> None:
        assert h["count"] == h["+Inf"] == calls
        assert h[repr(2**25 / 1e9)] == 0  # none under 33.6 ms
        assert h[repr(2**28 / 1e9)] == calls  # all under 268 ms (50 ms on a loaded machine)
        assert calls * 0.05 <= h["sum"] < calls * 0.268
    try:
        rail.up()
        oven = wait_for(lambda: rail.running("oven", 1), 20, what="the oven running")
        wait_for(lambda: rail.running("ovens", 1), 20, what="the ovens running")
        rail.send(range(6))
        near_50_ms(wait_for(lambda: counted("oven", 6), 20, what="oven's 6 calls"), 6)
        near_50_ms(wait_for(lambda: counted("ovens", 6), 20, what="ovens' 6 calls"), 6)
        os.kill(oven["pids"][0], signal.SIGKILL)
        wait_for(lambda: (w := rail.running("oven", 1)) and w["restarts"] == 1, 20,
                 what="the killed oven restarted")
        assert histogram("oven")["count"] >= 6  # the dead replica's calls are kept
        rail.send(range(6, 8))
        h = wait_for(lambda: counted("oven", 8), 20, what="2 more calls after the restart")
        near_50_ms(h, int(h["count"]))  # 8, or more if the kill came before a commit
        assert rail.stop() == 0
    finally:
        rail.stop()
