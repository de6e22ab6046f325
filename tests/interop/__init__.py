"""Interop tests: clients in other languages (examples/node, examples/c, examples/shell),
written from docs/protocol.md alone, run against a real broker.

A test is skipped only when its toolchain is missing (node/npm, a C compiler with make,
pkg-config, libzmq and msgpack-c); .ci/run installs all of them.  The checks here read the
broker with raw pyzmq + msgpack, like tests/integration/test_raw_protocol.py.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from typing import Any

import msgpack
import pytest
import zmq

from brokerd import protocol as p
from runtime.connection import Connection
from tests.helpers import ROOT

EXAMPLES = ROOT / "examples"
TIMEOUT_S = 10.0
_ids = itertools.count(1)


def call_raw(api: str, body: bytes) -> dict[str, Any]:
    """Send one request body on a fresh DEALER; return the decoded reply (or fail)."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(api)
    try:
        sock.send(body)
        assert sock.poll(int(TIMEOUT_S * 1000)), f"no reply in {TIMEOUT_S} s"
        reply: dict[str, Any] = msgpack.unpackb(sock.recv(), strict_map_key=False)
    finally:
        sock.close()
    assert reply["op"] != "error", reply
    return reply


def call(api: str, op: str, **fields: Any) -> dict[str, Any]:
    """One raw request; fails the test on no reply or an error reply."""
    request_id = next(_ids)
    reply = call_raw(api, msgpack.packb({"op": op, "id": request_id, **fields}))
    assert reply["op"] == op and reply["id"] == request_id, reply
    return reply


def read_topic(api: str, topic: str) -> list[tuple[int, int, list[Any]]]:
    """Every record of ``topic`` as (partition, offset, record), by partition then offset."""
    out: list[tuple[int, int, list[Any]]] = []
    (info,) = call(api, "metadata", topics=[topic])["topics"]
    for part in info["partitions"]:
        offset = part["start_offset"]
        while offset < part["end_offset"]:
            reply = call(api, "fetch", topic=topic, partition=part["partition"], offset=offset)
            for base, _ts, records in reply["batches"]:
                for i, record in enumerate(records):
                    if base + i >= offset:
                        out.append((part["partition"], base + i, record))
                offset = max(offset, base + len(records))
    return out


def topic_exists(api: str, topic: str) -> bool:
    return topic in {t["name"] for t in call(api, "metadata")["topics"]}


def describe_group(api: str, group: str) -> p.DescribeGroupReply:
    conn = Connection(api, timeout_s=TIMEOUT_S)
    try:
        reply: p.DescribeGroupReply = conn.call(p.DescribeGroup(group=group))
        return reply
    finally:
        conn.close()


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"toolchain missing: {', '.join(missing)} not on PATH "
                    f"(.ci/run installs what these tests need; see the example's README)")


def run(cmd: list[str], timeout: float = 60.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a client to completion (killed by the timeout), output captured as text."""
    return subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, **kwargs)


def describe_run(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
