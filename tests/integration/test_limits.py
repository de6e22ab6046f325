"""Limits and costs: an idle broker sleeps, parked requests and batches are bounded."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import msgspec
import psutil
import pytest

from brokerd import protocol as p
from runtime.client import Consumer
from tests.helpers import BrokerProcess, start_broker, wait_for
from tests.integration.wire import RawClient, assert_clear_error

MEASURE_S = 2.0


def test_an_idle_broker_with_a_long_polling_consumer_uses_almost_no_cpu(
        broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="night", partitions=4)
        raw.send_frames([msgspec.msgpack.encode({  # parked until it times out in a minute
            "op": "fetch", "id": 1, "topic": "night", "partition": 0, "offset": 0,
            "max_wait_ms": p.MAX_WAIT_MS})])
        consumer = Consumer(broker.api, group="night-shift", topics=["night"])
        stop = threading.Event()
        polled: list[int] = []

        def long_poll() -> None:
            while not stop.is_set():
                polled.append(len(consumer.poll(timeout_s=2.5)))

        poller = threading.Thread(target=long_poll, daemon=True)
        poller.start()
        try:
            wait_for(lambda: consumer._poll_id is not None, 5, what="the poll to be parked")
            broker_proc = psutil.Process(broker.pid)
            before, started = broker_proc.cpu_times(), time.monotonic()
            stop.wait(MEASURE_S)  # the measuring window itself, not a wait for an event
            after, elapsed = broker_proc.cpu_times(), time.monotonic() - started
        finally:
            stop.set()
            poller.join(10)
            consumer.close()
        stats = raw.ok("stats")["stats"]

    used = (after.user - before.user) + (after.system - before.system)
    assert used / elapsed < 0.05, f"an idle broker used {used / elapsed:.1%} of a core"
    assert stats["groups"] == 1 and sum(polled) == 0


def test_too_many_parked_requests_from_one_client_are_refused_and_the_rest_answered(
        broker: BrokerProcess) -> None:
    limit = 64  # BrokerConfig.max_waiting_per_client
    with RawClient(broker.api) as raw, RawClient(broker.api) as other:
        raw.ok("create_topic", topic="queue", partitions=1)
        for request_id in range(1000, 1000 + limit):
            raw.send_frames([msgspec.msgpack.encode({
                "op": "fetch", "id": request_id, "topic": "queue", "partition": 0,
                "offset": 0, "max_wait_ms": 30_000})])
        refused = raw.call("fetch", topic="queue", partition=0, offset=0, max_wait_ms=30_000)
        assert_clear_error(refused)
        assert refused["code"] == "TOO_MANY_WAITING"

        other.ok("produce", topic="queue", partition=0, records=[["wake up"]])
        answered = [raw.recv_reply(timeout_s=10) for _ in range(limit)]

    assert sorted(r["id"] for r in answered if r) == list(range(1000, 1000 + limit))
    assert all(r["op"] == "fetch" and r["batches"] for r in answered if r)


def test_a_batch_over_max_batch_bytes_is_refused_and_nothing_is_appended(
        broker: BrokerProcess) -> None:
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="menu", partitions=1)
        code = raw.error_code("produce", topic="menu", partition=0,
                              records=[[b"m" * (9 * 1024 * 1024)]])
        assert code == "MESSAGE_TOO_LARGE"
        code = raw.error_code("produce", topic="menu", partition=0, records=[])
        assert code == "BAD_REQUEST"
        assert raw.ok("list_offsets", topic="menu", partition=0, timestamp=-1)["offset"] == 0
        raw.ok("produce", topic="menu", partition=0, records=[[b"m" * (1024 * 1024)]])
        assert raw.ok("list_offsets", topic="menu", partition=0, timestamp=-1)["offset"] == 1


def test_running_out_of_file_descriptors_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux) to start the broker under a low limit")
    broker = start_broker(tmp_path / "data", prefix=("prlimit", "--nofile=64:64"))
    try:
        with RawClient(broker.api) as raw:
            stats = raw.ok("stats")["stats"]
            assert stats["max_open_files"] == 64 and 0 < stats["open_files"] < 64
            failed = None
            for i in range(64):
                reply = raw.call("create_topic", topic=f"t{i}", partitions=4)
                if reply["op"] == "error":
                    failed = reply
                    break
            assert failed is not None, "64 descriptors cannot hold 256 partitions"
            assert failed["code"] == "STORAGE_ERROR"
            assert "file descriptors" in failed["message"] and "ulimit" in failed["message"]
            assert raw.ok("ping")["version"] >= 2
            raw.ok("delete_topic", topic="t0")
            assert raw.ok("create_topic", topic="again", partitions=1)["created"]
            names = {t["name"] for t in raw.ok("metadata")["topics"]}
            assert f"t{i}" not in names, "a topic that could not be built is not half there"
    finally:
        broker.stop()
    assert not [p for p in (broker.data_dir / "topics").iterdir() if p.name.startswith(".")]


def test_storms_of_short_connections_give_their_memory_back(broker: BrokerProcess) -> None:
    import socket
    import zmq
    proc = psutil.Process(broker.pid)
    port = int(broker.api.rsplit(":", 1)[1])
    with RawClient(broker.api) as raw:
        raw.ok("ping")
    baseline = proc.memory_info().rss
    context = zmq.Context()
    try:
        for _ in range(5):
            dealers = []
            for i in range(1000):
                s = context.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.connect(broker.api)
                s.send(msgspec.msgpack.encode({"op": "ping", "id": i}))
                dealers.append(s)
            for s in dealers:
                assert s.poll(10_000), "every ping is answered during the storm"
                s.recv()
                s.close()
            for i in range(1000):
                with socket.create_connection(("127.0.0.1", port)) as garbage:
                    garbage.sendall(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f" if i % 2
                                    else b"GET / HTTP/1.1\r\n\r\n" * 10)
    finally:
        context.term()
    limit = baseline + 32 * 2**20
    wait_for(lambda: proc.memory_info().rss <= limit, timeout=15.0,
             what=f"RSS back within 32 MB of its {baseline / 2**20:.0f} MB baseline")
    with RawClient(broker.api) as raw:
        assert raw.ok("ping")["version"] >= 2


def test_an_fsync_round_over_many_partitions_never_runs_out_of_descriptors(
        tmp_path: Path) -> None:
    """600 partitions hold 600 files; fsyncing all of them at once used to take 600
    duplicates more and, under a limit of 1,000, killed the broker (EMFILE)."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux) to start the broker under a low limit")
    broker = start_broker(tmp_path / "data", prefix=("prlimit", "--nofile=1000:1000"))
    try:
        with RawClient(broker.api) as raw:
            raw.ok("create_topic", topic="wide", partitions=600, config={"fsync": "always"})
            records = msgspec.Raw(msgspec.msgpack.encode([[i, f"k{i}"] for i in range(6000)]))
            reply = raw.call("produce", topic="wide", acks="all", records=records,
                             timeout_s=60)
            assert reply["op"] == "produce", reply
            assert sum(count for _, _, count in reply["offsets"]) == 6000
            assert len(reply["offsets"]) > 256, "the batch spread over more than one round"
            assert raw.ok("ping")["version"] >= 2
    finally:
        broker.stop()
    assert broker.proc.returncode == 0, broker.log()[-2000:]
