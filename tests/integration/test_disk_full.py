"""A full disk gets STORAGE_ERROR, the broker keeps serving, and recovers when space returns."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from brokerd import protocol as p
from runtime.connection import BrokerError, Connection
from tests.helpers import start_broker
from tests.integration.wire import RawClient


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"4m"``) mounted at ``mount`` (made here) and unmounted after;
    the test skips, saying why, where it cannot be mounted (not root)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"needs root to mount a {size} tmpfs for the disk-full test")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "4m") as mount:
        yield mount


def fill(path: Path) -> int:
    """Write zeros to ``path`` until the filesystem is full; return the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return written


def produce(conn: Connection, values: list[int]) -> p.ProduceReply:
    records = msgspec.Raw(msgspec.msgpack.encode([[v] for v in values]))
    return conn.call(p.Produce(topic="t", partition=0, records=records, acks="all"))


def all_values(conn: Connection) -> list[int]:
    reply = conn.call(p.Fetch(topic="t", partition=0, offset=0, max_bytes=16 * 1024 * 1024))
    out, expected = [], 0
    for base, _, records in reply.batches:
        assert base == expected, "offsets must continue without a gap"
        decoded = msgspec.msgpack.decode(records)
        out.extend(r[0] for r in decoded)
        expected = base + len(decoded)
    return out


def test_a_full_disk_gets_storage_error_and_loses_no_acked_event(small_disk: Path) -> None:
    broker = start_broker(small_disk / "data")
    try:
        conn = Connection(broker.api, timeout_s=10)
        acked: list[int] = []
        assert produce(conn, list(range(100))).offsets[0][1] == 0
        acked += range(100)
        filler = small_disk / "filler"
        fill(filler)
        with pytest.raises(BrokerError) as refused:
            produce(conn, list(range(100, 20_100)))
        assert refused.value.code == "STORAGE_ERROR"
        assert "No space left" in refused.value.message
        assert conn.call(p.Ping()).version == p.PROTOCOL_VERSION, "the broker keeps serving"
        os.unlink(filler)
        reply = produce(conn, list(range(20_100, 20_200)))
        assert reply.offsets[0][1] == 100, "the refused batch left nothing behind"
        acked += range(20_100, 20_200)
        assert all_values(conn) == acked
        conn.close()
    finally:
        assert broker.stop() == 0
    again = start_broker(small_disk / "data")
    try:
        conn = Connection(again.api, timeout_s=10)
        assert all_values(conn) == acked, "every acked event survives a restart exactly once"
        conn.close()
    finally:
        again.stop()


def test_every_write_path_on_a_full_disk_is_a_storage_error_and_works_again(
        small_disk: Path) -> None:
    """Creating a topic (asked or by a produce), rolling a segment, moving the start offset
    and adding partitions each need new files: on a full disk each is refused with
    STORAGE_ERROR naming what failed, nothing half-made stays, the broker serves on, and
    each works once there is space; committed offsets survive a restart."""
    broker = start_broker(small_disk / "data")
    try:
        with RawClient(broker.api) as raw:
            raw.ok("create_topic", topic="t", partitions=1, config={"segment_bytes": 4096})
            raw.ok("produce", topic="t", partition=0, records=[[v] for v in range(10)])
            joined = raw.ok("join", group="g", topics=["t"], session_timeout_ms=30000)
            member = {"group": "g", "member_id": joined["member_id"],
                      "generation": joined["generation"]}
            raw.ok("commit", offsets=[["t", 0, 5]], **member)
            filler = small_disk / "filler"
            fill(filler)
            big = [["x" * 3000]] * 3  # past the 4 KiB segment: needs a new one
            for op, fields, what in (
                    ("create_topic", {"topic": "u", "partitions": 3}, "cannot create topic"),
                    ("produce", {"topic": "v", "records": [[1]]}, "cannot create topic"),
                    ("produce", {"topic": "t", "partition": 0, "records": big},
                     "cannot roll a segment"),
                    ("delete_records", {"topic": "t", "partition": 0, "offset": 2},
                     "cannot store the start offset"),
                    ("create_partitions", {"topic": "t", "partitions": 2},
                     "cannot add partitions")):
                refused = raw.call(op, **fields)
                assert refused.get("code") == "STORAGE_ERROR", (op, refused)
                assert what in refused["message"] and "No space left" in refused["message"]
            assert raw.ok("ping")["version"] == p.PROTOCOL_VERSION
            os.unlink(filler)
            raw.ok("create_topic", topic="u", partitions=3)
            raw.ok("produce", topic="v", records=[[1]])
            assert raw.ok("produce", topic="t", partition=0, records=big)["offsets"] == \
                [[0, 10, 3]], "the refused batch left nothing behind"
            assert raw.ok("delete_records", topic="t", partition=0, offset=2)[
                "start_offset"] == 2
            assert raw.ok("create_partitions", topic="t", partitions=2)["partitions"] == 2
            raw.ok("commit", offsets=[["t", 0, 8]], **member)
        assert broker.proc.poll() is None
    finally:
        assert broker.stop() == 0
    again = start_broker(small_disk / "data")
    try:
        with RawClient(again.api) as raw:
            parts = raw.ok("describe_group", group="g")["partitions"]
            assert [(d["partition"], d["committed"]) for d in parts] == [(0, 8)]
            meta = {t["name"]: [(q["start_offset"], q["end_offset"]) for q in t["partitions"]]
                    for t in raw.ok("metadata")["topics"]}
            assert meta == {"t": [(2, 13), (0, 0)], "u": [(0, 0)] * 3, "v": [(0, 1)]}
    finally:
        again.stop()
