"""CURVE on the broker's sockets: only allow-listed keys reach a handler (docs/security.md)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from brokerd import protocol as p
from brokerd.protocol import EXIT_CONFIG
from runtime.client import Producer
from runtime.connection import BrokerError, BrokerUnavailable, Connection
from runtime.security.keys import ClientKeys
from tests.helpers import ROOT, BrokerProcess, python_env, wait_for
from tests.security.secure import (
    CURVE_GREETING,
    Keys,
    client_keys,
    make_keys,
    raw_tcp,
    rss_of,
    start_secure_broker,
    stranger_socket,
    write_acl,
)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Keys]:
    return {name: make_keys(tmp_path / "keys", name) for name in ("broker", "alice")}


@pytest.fixture
def secure(tmp_path: Path, keys: dict[str, Keys]) -> Iterator[BrokerProcess]:
    acl = write_acl(tmp_path / "acl.toml", [keys["alice"]])  # an allow-list, no rules
    broker = start_secure_broker(tmp_path, keys["broker"], acl)
    try:
        yield broker
    finally:
        broker.stop()


def records(*values: bytes) -> msgspec.Raw:
    return msgspec.Raw(msgspec.msgpack.encode([[v, None, None, None] for v in values]))


def counts(conn: Connection) -> dict[str, int]:
    return conn.call(p.Stats()).stats["counts"]


def brokerd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "brokerd", *args], check=False,
                          env=python_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_broker_refuses_curve_without_an_allow_list_and_acl_without_curve(
        tmp_path: Path, keys: dict[str, Keys]) -> None:
    acl = write_acl(tmp_path / "acl.toml", [keys["alice"]])
    data = str(tmp_path / "data")
    for args, says in [
        (["--curve-secret-key", str(keys["broker"].secret_file)], "needs --acl"),
        (["--acl", str(acl)], "needs --curve-secret-key"),
        (["--curve-secret-key", str(keys["broker"].public_file), "--acl", str(acl)],
         "only a public key"),
        (["--curve-secret-key", str(keys["broker"].secret_file), "--acl",
          str(write_acl(tmp_path / "empty.toml", []))], "nobody could connect"),
    ]:
        done = brokerd("--data-dir", data, "--bind", "tcp://127.0.0.1:*", "--ingest",
                       "tcp://127.0.0.1:*", *args)
        assert done.returncode == EXIT_CONFIG, done.stderr
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_an_allowed_key_produces_and_reads_over_curve(
        secure: BrokerProcess, keys: dict[str, Keys], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAIL_CURVE_SERVER_KEY", str(keys["broker"].public_file))
    monkeypatch.setenv("RAIL_CURVE_KEY_FILE", str(keys["alice"].secret_file))
    with Producer(secure.api) as producer:  # keys from the environment, as every client
        producer.send("t1", b"over curve")
        producer.flush()
    conn = Connection(secure.api, timeout_s=5)
    try:
        fetched = conn.call(p.Fetch(topic="t1", partition=0, offset=0))
        assert fetched.end_offset == 1
    finally:
        conn.close()


def test_strangers_never_reach_a_handler_and_others_are_served(
        secure: BrokerProcess, keys: dict[str, Keys]) -> None:
    """An unknown key, a plaintext client, raw TCP garbage and a truncated handshake, on
    both sockets: no request is counted, nothing is ingested, alice is answered throughout."""
    alice = Connection(secure.api, timeout_s=5, keys=client_keys(keys["broker"], keys["alice"]))
    context = zmq.Context()
    try:
        before = counts(alice)
        strangers = [stranger_socket(context, secure.api, keys["broker"].public),
                     stranger_socket(context, secure.api, None)]
        pushers = [stranger_socket(context, secure.ingest, keys["broker"].public, zmq.PUSH),
                   stranger_socket(context, secure.ingest, None, zmq.PUSH)]
        for s in strangers:
            s.send(msgspec.msgpack.encode({"op": "ping", "id": 7}))
        for s in pushers:
            s.send_multipart([b"t9", b"sneaked in"])
        for endpoint in (secure.api, secure.ingest):
            raw_tcp(endpoint, b"GET / HTTP/1.0\r\n\r\n" * 10)
            raw_tcp(endpoint, CURVE_GREETING[:30])  # a greeting cut short
            raw_tcp(endpoint, CURVE_GREETING + b"\x04\x20\x05HELLO")  # a HELLO cut short
        for _ in range(5):
            assert alice.call(p.Ping()).version == p.PROTOCOL_VERSION
        for s in strangers:
            assert not s.poll(300), "a stranger got a reply"
        after = counts(alice)
        assert after["requests"] - before["requests"] == 6  # alice's pings and stats only
        assert after["bad_frames"] == before["bad_frames"]
        assert after["ingest_records"] == before["ingest_records"] == 0
        assert "t9" not in alice.call(p.Stats()).stats["topics"]
        wait_for(lambda: counts(alice)["curve_refused"] >= 2, 5,
                 what="ZAP to refuse both unknown keys")
        for s in strangers + pushers:
            s.close()
    finally:
        alice.close()
        context.term()


def test_a_client_without_keys_gets_no_answer_from_a_curve_broker(
        secure: BrokerProcess) -> None:
    conn = Connection(secure.api, timeout_s=0.5)
    try:
        with pytest.raises(BrokerUnavailable):
            conn.call(p.Ping())
    finally:
        conn.close()


def test_memory_returns_to_baseline_after_2000_refused_connections(
        secure: BrokerProcess, keys: dict[str, Keys]) -> None:
    alice = Connection(secure.api, timeout_s=5, keys=client_keys(keys["broker"], keys["alice"]))
    context = zmq.Context()
    try:
        def storm(n: int) -> None:
            for i in range(n):
                kind = i % 4
                if kind == 0:
                    raw_tcp(secure.api, b"\x00garbage" * 64)
                elif kind == 1:
                    raw_tcp(secure.api, CURVE_GREETING[: 1 + i % 63])
                else:  # a full handshake that ZAP refuses, or a plaintext ZeroMQ peer
                    s = stranger_socket(context, secure.api,
                                        keys["broker"].public if kind == 2 else None)
                    s.send(b"\x80")
                    s.poll(1 if i % 50 else 50)
                    s.close()
        storm(200)  # warm up: allocator arenas, ZAP thread, lazily built tables
        wait_for(lambda: alice.call(p.Ping()), 5, what="the broker to answer")
        baseline = rss_of(secure.pid)
        started = time.monotonic()
        storm(2000)
        took = time.monotonic() - started
        assert alice.call(p.Ping()).version == p.PROTOCOL_VERSION
        bound = baseline + 8 * 1024 * 1024
        wait_for(lambda: rss_of(secure.pid) <= bound, 15, interval=0.2,
                 what=f"broker RSS back under {bound} (baseline {baseline}, "
                 f"now {rss_of(secure.pid)}, storm took {took:.1f} s)")
        assert counts(alice)["bad_frames"] == 0
    finally:
        alice.close()
        context.term()


def test_metrics_are_scraped_over_curve_with_the_brokers_own_key(
        tmp_path: Path, keys: dict[str, Keys]) -> None:
    acl = write_acl(tmp_path / "acl.toml", [keys["alice"]],
                    '[[rule]]\nprincipal = "alice"\nresource = "topic"\nname = "t1"\n'
                    'ops = ["write"]\n')  # enforced rules: the broker's own key passes
    broker = start_secure_broker(tmp_path, keys["broker"], acl, "--metrics", "127.0.0.1:0")
    try:
        address = re.search(r"metrics=(\S+)", broker.ready_line).group(1)  # type: ignore[union-attr]
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as page:
            assert "rail_brokers" in page.read().decode()
    finally:
        broker.stop()


def test_a_key_removed_by_a_reload_can_do_nothing_more_on_its_open_connection(
        tmp_path: Path, keys: dict[str, Keys]) -> None:
    bob = make_keys(tmp_path / "keys", "bob")
    acl = write_acl(tmp_path / "acl.toml", [keys["alice"], bob])  # an allow-list only
    broker = start_secure_broker(tmp_path, keys["broker"], acl)
    alice = Connection(broker.api, timeout_s=5, keys=client_keys(keys["broker"], keys["alice"]))
    try:
        assert alice.call(p.Ping()).version == p.PROTOCOL_VERSION
        write_acl(acl, [bob])
        broker.proc.send_signal(signal.SIGHUP)

        def refused() -> bool:
            try:
                alice.call(p.Ping())
            except BrokerError as exc:
                return exc.code == "NOT_AUTHORIZED" and "was removed" in exc.message
            return False
        wait_for(refused, 5, what="alice's open connection to be refused")
        with pytest.raises(BrokerError, match="NOT_AUTHORIZED"):
            alice.call(p.Produce(topic="t1", records=records(b"late")))
        assert "t1" not in brokerd_topics(broker, keys)
    finally:
        alice.close()
        broker.stop()


def brokerd_topics(broker: BrokerProcess, keys: dict[str, Keys]) -> list[str]:
    """Topic names as the broker itself knows them (its own key passes every check)."""
    conn = Connection(broker.api, timeout_s=5, keys=ClientKeys(
        keys["broker"].public, keys["broker"].public,
        zmq.auth.load_certificate(str(keys["broker"].secret_file))[1] or b""))
    try:
        return [t.name for t in conn.call(p.Metadata()).topics]
    finally:
        conn.close()
