"""examples/c: C producers with libzmq (raw ingest) and libzmq + msgpack-c (a produce request
and its acknowledgement), written from docs/protocol.md, built with their Makefile."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zlib
from pathlib import Path

from tests.helpers import BrokerProcess, free_port, start_broker, wait_for
from tests.interop import call, describe_run, read_topic, run, topic_exists


def test_c_ingest_producer_pushes_raw_frames_that_are_stored_as_bin(
        c_examples: Path, broker: BrokerProcess) -> None:
    tool = str(c_examples / "producer_ingest")
    plain = run([tool, "-e", broker.ingest, "c.ingest", "hello", "", "world"])
    assert plain.returncode == 0, describe_run(plain)
    assert "pushed 3 event(s) to c.ingest" in plain.stdout
    keyed = run([tool, "-e", broker.ingest, "-k", "table-7", "c.ingest", "a pizza"])
    assert keyed.returncode == 0, describe_run(keyed)

    # No acknowledgement on the ingest socket: wait until the broker has stored them.
    wait_for(lambda: topic_exists(broker.api, "c.ingest")
             and len(read_topic(broker.api, "c.ingest")) == 4, what="4 ingested records")
    records = [record for _p, _o, record in read_topic(broker.api, "c.ingest")]
    # §14: [topic, value] is stored as [value], [topic, key, value] as [value, key], as bin
    assert records == [[b"hello"], [b""], [b"world"], [b"a pizza", b"table-7"]]


def test_c_request_producer_gets_its_acknowledgement(
        c_examples: Path, broker: BrokerProcess) -> None:
    tool = str(c_examples / "producer_request")
    call(broker.api, "create_topic", topic="c.orders", partitions=3)
    done = run([tool, "-e", broker.api, "-k", "table-7", "-a", "all", "c.orders",
                "a pizza", "a pasta"])
    assert done.returncode == 0, describe_run(done)
    # "table-7" -> crc32 40529156 % 3 = partition 2 (§5); the ack names the offsets
    assert zlib.crc32(b"table-7") % 3 == 2
    assert "2 event(s) stored in c.orders: partition 2 offsets 0-1;" in done.stdout
    keyless = run([tool, "-e", broker.api, "c.orders", "a drink"])
    assert keyless.returncode == 0, describe_run(keyless)
    records = read_topic(broker.api, "c.orders")
    assert [(p, o, r) for p, o, r in records if p == 2] == [
        (2, 0, ["a pizza", "table-7"]), (2, 1, ["a pasta", "table-7"])]
    assert [r for _p, _o, r in records if _p != 2] == [["a drink"]]

    # An error reply is reported with its code, exit 1.
    bad = run([tool, "-e", broker.api, "no spaces allowed", "x"])
    assert bad.returncode == 1 and "error INVALID_TOPIC" in bad.stderr, describe_run(bad)
    # No broker: no reply in time, exit 3 (it never hangs).
    nobody = run([tool, "-e", f"tcp://127.0.0.1:{free_port()}", "-t", "300", "c.orders", "x"])
    assert nobody.returncode == 3 and "no reply" in nobody.stderr, describe_run(nobody)


def test_c_request_producer_says_at_once_when_the_connection_drops_before_the_reply(
        c_examples: Path, tmp_path: Path) -> None:
    """The broker is paused (SIGSTOP) while the request is out, then killed with kill -9:
    its reply cannot come.  The producer watches its connection (docs/protocol.md §2.1)
    and exits 3 as soon as it drops, not at the end of its 30 s timeout."""
    broker = start_broker(tmp_path / "data")
    try:
        call(broker.api, "create_topic", topic="c.lost", partitions=1)
        os.kill(broker.pid, signal.SIGSTOP)
        proc = subprocess.Popen([str(c_examples / "producer_request"), "-e", broker.api,
                                 "-t", "30000", "c.lost", "x"], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)  # connected and sent (the kernel holds it for the paused broker)
            assert proc.poll() is None, "it must still be waiting for the reply"
            broker.kill9()
            killed = time.monotonic()
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - killed
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert proc.returncode == 3 and "dropped before the reply" in err, (out, err)
        assert took < 2.0, f"exited {took:.1f} s after the kill"
    finally:
        broker.stop()
