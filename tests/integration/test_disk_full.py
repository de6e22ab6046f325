"""A full disk gets STORAGE_ERROR, the broker keeps serving, and recovers when space returns."""

from __future__ import annotations

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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("needs root to mount a 4 MiB tmpfs for the disk-full test")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


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
