"""Replica fetches over CURVE: brokers of a cluster share its key pair; a broker with a
key the allow-list does not hold copies nothing (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from brokerd import protocol as p
from runtime.connection import BrokerError, Connection
from tests.cluster.client import read_log, start_member
from tests.cluster.conftest import zookeeper  # noqa: F401 - the fixture
from tests.cluster.zookeeper import ZooKeeper
from tests.helpers import BrokerProcess, wait_for
from tests.security.secure import client_keys, make_keys, rule, write_acl

PARTITIONS = 3


def test_replication_runs_over_curve_and_an_unlisted_broker_key_cannot_join(
        tmp_path: Path, zookeeper: ZooKeeper) -> None:  # noqa: F811 - the fixture
    keys = {n: make_keys(tmp_path / "keys", n) for n in ("cluster", "rogue", "admin")}
    acl = write_acl(tmp_path / "acl.toml", [keys["admin"]],
                    rule("admin", "cluster", "", ["admin"])
                    + rule("admin", "topic", "", ["read", "write"], match="prefix"))
    config = tmp_path / "broker.toml"
    config.write_text("replica_lag_time_ms = 1000\n")
    brokers: list[BrokerProcess] = []
    conns: dict[int, Connection] = {}
    try:
        for i, key in enumerate(("cluster", "cluster", "rogue")):
            brokers.append(start_member(tmp_path, zookeeper, i, "--curve-secret-key",
                                        str(keys[key].secret_file), "--acl", str(acl),
                                        "--config", str(config)))
        for i in (0, 1):
            conns[i] = Connection(brokers[i].api, timeout_s=10,
                                  keys=client_keys(keys["cluster"], keys["admin"]))
        conns[0].call(p.CreateTopic(topic="t", partitions=PARTITIONS,
                                    config={"replication_factor": 3}))

        def trusted_in_sync() -> dict[int, int] | None:
            """{partition: leader} of the partitions 0 or 1 lead with ISR exactly [0, 1]."""
            led = {}
            for i, conn in conns.items():
                try:
                    topics = conn.call(p.Metadata(topics=["t"])).topics
                except BrokerError as exc:  # this broker has not heard of t yet
                    assert exc.code == "UNKNOWN_TOPIC", exc
                    continue
                for part in topics[0].partitions:
                    if part.leader == i and sorted(part.isr) == [0, 1]:
                        led[part.partition] = i
            return led or None
        led = wait_for(trusted_in_sync, 30, interval=0.2,
                       what="the rogue broker to drop out of the ISR")
        values = list(range(10))
        for partition, leader in led.items():
            for v in values:
                reply = conns[leader].call(p.Produce(
                    topic="t", partition=partition, acks="all",
                    records=msgspec.Raw(msgspec.msgpack.encode([[v]]))))
                assert reply.offsets  # acks="all": the other trusted broker has it too
    finally:
        for conn in conns.values():
            conn.close()
        for b in brokers:
            b.stop()
    for partition in led:
        copies = [read_log(b.data_dir, "t", partition) for b in brokers]
        assert copies[0] == copies[1] and len(copies[0]) == len(values)
        assert copies[2] == []  # the rogue's handshakes fail: it holds nothing
