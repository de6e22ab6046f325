"""``rail up`` with a CURVE broker: the supervisor, its workers and a producer all
authenticate, each with the permissions its key has (docs/security.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from brokerd import protocol as p
from runtime.client import Producer
from runtime.connection import BrokerError, Connection
from tests.helpers import ROOT, free_port, python_env, wait_for
from tests.security.secure import client_env, client_keys, make_keys, rule, write_acl

WORKER = """
def handle(event, ctx):
    with open({out!r}, "a") as f:
        f.write(f"{{event.value}}\\n")
"""


def test_rail_up_runs_a_curve_broker_and_its_workers_and_clients_authenticate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {n: make_keys(tmp_path / "keys", n) for n in ("broker", "rail", "shop")}
    write_acl(tmp_path / "acl.toml", [keys["rail"], keys["shop"]],
              rule("rail", "cluster", "", ["admin"])
              + rule("rail", "topic", "", ["read", "write"], match="prefix")
              + rule("rail", "group", "", ["read"], match="prefix")
              + rule("shop", "topic", "orders", ["write"]))
    out = tmp_path / "seen.txt"
    (tmp_path / "kitchen.py").write_text(WORKER.format(out=str(out)))
    api = f"tcp://127.0.0.1:{free_port()}"
    (tmp_path / "rail.toml").write_text(
        f'[broker]\ndata_dir = "data"\nbind = "{api}"\n'
        f'ingest = "tcp://127.0.0.1:{free_port()}"\n'
        'curve_secret_key = "keys/broker.key_secret"\nacl = "acl.toml"\n'
        f'[supervisor]\ncontrol = "tcp://127.0.0.1:{free_port()}"\ngrace_s = 5\n'
        '[topics.orders]\npartitions = 2\n'
        '[workers.kitchen]\nscript = "kitchen.py"\ntopics = ["orders"]\n')
    with open(tmp_path / "up.err", "wb") as err:  # the supervisor and its workers: "rail"
        up = subprocess.Popen([sys.executable, "-m", "runtime.cli", "up", "-c",
                               str(tmp_path / "rail.toml")], stdout=subprocess.DEVNULL,
                              stderr=err, cwd=ROOT,
                              env={**python_env(), **client_env(keys["broker"], keys["rail"])})
    try:
        for name, value in client_env(keys["broker"], keys["shop"]).items():
            monkeypatch.setenv(name, value)

        def sent() -> bool:
            try:
                with Producer(api, request_timeout_s=2.0) as producer:
                    for n in range(5):
                        producer.send("orders", n, key=str(n))
                    producer.flush()
                return True
            except BrokerError:  # the broker or the topic is not there yet
                return False
        wait_for(sent, 30, interval=0.2, what="the shop's produce through the CURVE broker")
        wait_for(lambda: out.exists() and len(out.read_text().split()) >= 5, 30,
                 what="the kitchen worker to handle the orders over CURVE")
        assert sorted(int(v) for v in out.read_text().split()) == [0, 1, 2, 3, 4]
        shop = Connection(api, timeout_s=5, keys=client_keys(keys["broker"], keys["shop"]))
        try:
            with pytest.raises(BrokerError, match="NOT_AUTHORIZED"):
                shop.call(p.Fetch(topic="orders", partition=0, offset=0))
        finally:
            shop.close()
    finally:
        up.terminate()
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(5)
