"""Network partitions made of Linux network namespaces: ZooKeeper and each of three brokers
in a namespace of its own, joined by veth pairs to a bridge, the test's clients in the root
namespace.  A broker's link is taken down at the bridge (packets stop both ways, its process
keeps running), or only the traffic between it and its followers is dropped, then the
partition heals; the history checks run at the end of each scenario."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.cluster import netns
from tests.cluster.client import (
    LeaderProducer,
    Stream,
    check_replicas,
    metadata,
    wait_in_sync,
)
from tests.cluster.test_cluster_consumer import Reader
from tests.cluster.zookeeper import available
from tests.helpers import (
    ROOT,
    BrokerProcess,
    python_env,
    stop_process,
    wait_for,
    written_lines,
)
from tests.integration.wire import RawClient

WHY_NOT = netns.why_not() or available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

SESSION_S = 4.0  # the brokers' ZooKeeper session timeout
LAG_S = 4.0  # their replica_lag_time_ms
PARTITIONS = 3
GROUP = "partitioned"
CONFIG = (f"zookeeper_session_timeout_ms = {int(SESSION_S * 1000)}\n"
          f"replica_lag_time_ms = {int(LAG_S * 1000)}\n")


@dataclass
class Cluster:
    net: netns.Network
    zk: netns.NetZooKeeper | None = None
    hosts: list[netns.Host] = field(default_factory=list)
    brokers: list[BrokerProcess] = field(default_factory=list)

    @property
    def apis(self) -> list[str]:
        return [b.api for b in self.brokers]

    def stop(self) -> None:
        for b in self.brokers:
            b.stop()
        if self.zk is not None:
            self.zk.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """ZooKeeper and three brokers, each in its own namespace on a fresh bridge; every
    process, namespace, veth and the bridge removed afterwards, even on failure."""
    net = netns.Network.create()
    made = Cluster(net)
    try:
        made.zk = netns.start_zookeeper(net.add("zk", 2), tmp_path / "zk")
        config = tmp_path / "broker.toml"
        config.write_text(CONFIG)
        for i in range(3):
            made.hosts.append(net.add(f"b{i}", 10 + i))
            made.brokers.append(netns.start_broker_in(made.hosts[i], tmp_path, made.zk, i,
                                                      config))
        yield made
    finally:
        try:
            made.stop()
        finally:
            net.close()


class GroupReader(Reader):
    """A group member polling in a thread and committing (sync) after every batch
    (test_cluster_consumer's ``Reader``); it keeps what it read and each offset the
    coordinator acknowledged, in order."""

    def __init__(self, apis: list[str]) -> None:
        super().__init__(",".join(apis), group=GROUP, timeout_s=5)

    def read(self) -> int:
        return sum(map(len, list(self.seen.values())))

    def check(self, acked: list[tuple[int, int, Any]]) -> None:
        """Every acknowledged record read with the value at its offset, no offset skipped,
        committed offsets never backwards."""
        assert not self.errors, self.errors
        got = {(part, offset): v for part, rows in self.seen.items() for offset, v in rows}
        missing = sorted({(part, offset) for part, offset, _ in acked} - set(got))
        assert not missing, f"acknowledged but never consumed: {missing[:5]}"
        assert all(got[(part, offset)] == v for part, offset, v in acked)
        for part, rows in self.seen.items():
            for (before, _), (after, _) in itertools.pairwise(rows):
                assert after <= before + 1, f"partition {part} skipped {before + 1}..{after - 1}"
            assert self.acked[part] == sorted(self.acked[part]), self.acked[part]


# A client on the old leader's side of the partition: it runs in the leader's namespace and
# sends one produce at a time to it, writing a line per reply.
STALE = """
import json, sys, time
from pathlib import Path
import msgspec
from tests.integration.wire import RawClient
api, acks, out, stop = sys.argv[1], sys.argv[2], open(sys.argv[3], "a"), Path(sys.argv[4])
acks = acks if acks == "all" else int(acks)
deadline = time.time() + 120
with RawClient(api) as raw:
    i = 0
    while not stop.exists() and time.time() < deadline:
        value, sent = f"stale-{acks}-{i}", time.time()
        records = msgspec.Raw(msgspec.msgpack.encode([[value]]))
        reply = raw.call("produce", timeout_s=30, topic="t", partition=0, acks=acks,
                         records=records)
        out.write(json.dumps({"value": value, "acks": acks, "sent": sent, "at": time.time(),
                              "offsets": reply.get("offsets"), "code": reply.get("code")}) + "\\n")
        out.flush()
        i += 1
        time.sleep(0.02)
"""


class StaleClients:
    """Two clients in a broker's namespace (they stay with it through a cut), producing to
    it with acks "all" and 1."""

    def __init__(self, host: netns.Host, api: str, folder: Path) -> None:
        self.outs = [folder / "stale-all.jsonl", folder / "stale-1.jsonl"]
        self.stop_file = folder / "stale.stop"
        self.procs = []
        with open(folder / "stale.err", "w") as err:
            for acks, out in zip(("all", "1"), self.outs, strict=True):
                self.procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", host.ns, sys.executable, "-c", STALE, api, acks,
                     str(out), str(self.stop_file)], env=python_env(), cwd=ROOT, stderr=err))

    def replies(self) -> list[dict[str, Any]]:
        return [json.loads(line) for out in self.outs for line in written_lines(out)]

    def close(self) -> None:
        self.stop_file.touch()
        for proc in self.procs:
            try:
                proc.wait(35)
            except subprocess.TimeoutExpired:
                stop_process(proc)


def leader_of(apis: list[str], topic: str, partition: int) -> int | None:
    """The partition's leader as the first of ``apis`` that answers names it."""
    for api in apis:
        meta = metadata(api, topic)
        if meta is not None:
            leader = meta["topics"][0]["partitions"][partition]["leader"]
            return leader if leader >= 0 else None
    return None


def test_a_leader_cut_off_by_a_network_partition_is_replaced_and_rejoins_by_epoch(
        cluster: Cluster, tmp_path: Path) -> None:
    apis = cluster.apis
    with RawClient(apis[0]) as raw:
        raw.ok("create_topic", topic="t", partitions=PARTITIONS,
               config={"replication_factor": 3, "min_insync_replicas": 2})
    victim = wait_in_sync(apis, "t", PARTITIONS, 3)[0]
    others = [api for i, api in enumerate(apis) if i != victim]
    stream = Stream(apis)
    reader = GroupReader(apis)
    stale = StaleClients(cluster.hosts[victim], apis[victim], tmp_path)
    try:
        wait_for(lambda: stream.acks_since(0, 0) >= 200 and reader.read() >= 200 and sum(
            r["acks"] == "all" and bool(r["offsets"]) for r in stale.replies()) >= 5, 60,
            what="acks, reads and the stale client's acks=all acks before the cut")

        cluster.net.cut(cluster.hosts[victim])
        cut_at = time.time()
        wait_for(lambda: leader_of(others, "t", 0) not in (None, victim), 30,
                 interval=0.2, what="a leader elected without the cut-off one")
        elected_at = time.time()
        new = leader_of(others, "t", 0)
        assert elected_at - cut_at >= SESSION_S * 0.5, "elected before the session could expire"
        wait_for(lambda: stream.acks_since(0, elected_at) >= 100, 30,
                 what="the producer going on at the new leader")
        wait_for(lambda: any(r["sent"] > cut_at + SESSION_S + 1 for r in stale.replies()), 30,
                 what="the stale client's replies past the old leader's session")

        cluster.net.heal(cluster.hosts[victim])
        wait_in_sync(apis, "t", PARTITIONS, 3, timeout=45)
        healed_at = time.time()
        wait_for(lambda: stream.acks_since(0, healed_at) >= 50, 30, what="acks after the heal")
        stream.finish()
        ends = stream.ends()
        wait_for(lambda: all(reader.acked[q] and reader.acked[q][-1] >= end
                             for q, end in ends.items()), 60,
                 what="the group to commit every record")
    finally:
        stale.close()
        reader.close()
        stream.close()
        cluster.stop()

    replies = stale.replies()
    after_cut = [r for r in replies if r["sent"] > cut_at]
    wrong = [r for r in after_cut if r["acks"] == "all" and r["offsets"]]
    assert not wrong, f"the cut-off leader acknowledged acks=all it could not replicate: {wrong}"
    late = [r for r in replies if r["sent"] > cut_at + SESSION_S and not r["code"]]
    assert not late, f"the cut-off leader took writes past its session: {late[:3]}"
    assert any(r["code"] == "NOT_LEADER" for r in after_cut), after_cut[-3:]
    assert any(r["acks"] == 1 and r["offsets"] for r in after_cut), \
        "the cut-off leader took no acks=1 write before it noticed: nothing to truncate"
    log = cluster.brokers[victim].log()
    assert "ZooKeeper session SUSPENDED: every leader replica steps down" in log
    assert "t[0]: truncating from" in log, "the old leader rejoined without truncating by epoch"
    assert f"t[0]: follower of broker {new}" in log

    stale_acked = [(0, off, r["value"]) for r in replies if r["acks"] == "all" and r["offsets"]
                   for _, off, _ in r["offsets"]]
    acked = stream.records() + stale_acked
    logs = check_replicas(cluster.brokers, "t", PARTITIONS, acked)
    kept = {msgspec.msgpack.decode(record)[0] for _, record in logs["0"][0]}
    assert not [r for r in after_cut if r["value"] in kept], \
        "a record the cut-off leader took after the cut survived"
    reader.check(acked)


def isr_at(api: str, topic: str) -> list[int] | None:
    meta = metadata(api, topic)
    return None if meta is None else sorted(meta["topics"][0]["partitions"][0]["isr"])


def test_a_follower_cut_off_leaves_the_isr_and_rejoins_it_after_the_heal(
        cluster: Cluster) -> None:
    apis = cluster.apis
    with RawClient(apis[0]) as raw:
        raw.ok("create_topic", topic="t", partitions=1,
               config={"replication_factor": 3, "min_insync_replicas": 2})
    leader = wait_in_sync(apis, "t", 1, 3)[0]
    controller = metadata(apis[leader], "t")["controller"]  # type: ignore[index]
    # A follower that is not the controller either: only the ISR has to change.
    cut = next(i for i in range(3) if i not in (leader, controller))
    stream = Stream(apis)
    try:
        wait_for(lambda: stream.acks_since(0, 0) >= 200, 30, what="acks before the cut")
        cluster.net.cut(cluster.hosts[cut])
        cut_at = time.time()
        rest = sorted({0, 1, 2} - {cut})
        wait_for(lambda: isr_at(apis[leader], "t") == rest, 30, interval=0.1,
                 what="the leader to drop the cut-off follower from the ISR")
        shrunk_at = time.time()
        assert shrunk_at - cut_at >= LAG_S * 0.9, "the ISR shrank before replica_lag_time_ms"
        wait_for(lambda: stream.acks_since(0, shrunk_at) >= 200, 30,
                 what="acks=all going on with two in-sync replicas")
        assert leader_of([apis[leader]], "t", 0) == leader, "the leader must not change"

        cluster.net.heal(cluster.hosts[cut])
        wait_in_sync(apis, "t", 1, 3, timeout=45)
        healed_at = time.time()
        wait_for(lambda: stream.acks_since(0, healed_at) >= 100, 30, what="acks after the heal")
        stream.finish()
    finally:
        stream.close()
        cluster.stop()
    # The ISR shrinks by the leader (replica_lag_time_ms) or by the controller (when the
    # follower's ZooKeeper session ends), whichever comes first: both say so in their
    # logs; it grows back by the leader.
    changes = sorted((line[:23], sorted(json.loads(after)))
                     for b in cluster.brokers for line in b.log().splitlines()
                     for after in re.findall(
                         r"(?<![\w.-])t\[0\]:? isr \[[\d, ]*\] -> (\[[\d, ]*\])", line))
    assert [isr for _, isr in changes[:2]] == [rest, [0, 1, 2]], f"the ISR changes: {changes}"
    acked = stream.records()
    logs = check_replicas(cluster.brokers, "t", 1, acked)
    assert len(logs["0"][0]) == len(acked), "every record acknowledged, each once"


@pytest.mark.skipif(shutil.which("iptables") is None,
                    reason="needs iptables to cut brokers from each other only")
def test_a_leader_cut_off_from_its_followers_only_refuses_acks_all_until_the_heal(
        cluster: Cluster) -> None:
    """The leader still holds its ZooKeeper session, so nobody replaces it (no unclean
    election); it shrinks the ISR to itself and refuses what it cannot replicate.  Its
    followers lead the other partitions and go on."""
    apis = cluster.apis
    with RawClient(apis[0]) as raw:
        raw.ok("create_topic", topic="t", partitions=PARTITIONS,
               config={"replication_factor": 3, "min_insync_replicas": 2})
    victim = wait_in_sync(apis, "t", PARTITIONS, 3)[0]
    followers = [cluster.hosts[i] for i in range(3) if i != victim]
    stream = Stream(apis)
    try:
        wait_for(lambda: stream.acks_since(0, 0) >= 100, 30, what="acks before the cut")
        for host in followers:
            cluster.net.cut_between(cluster.hosts[victim], host)
        cut_at = time.time()
        wait_for(lambda: isr_at(apis[victim], "t") == [victim], 30, interval=0.1,
                 what="the cut-off leader to shrink the ISR to itself")
        shrunk_at = time.time()
        with RawClient(apis[victim]) as raw:
            refused = raw.call("produce", topic="t", partition=0, acks="all",
                               records=msgspec.Raw(msgspec.msgpack.encode([["refused"]])))
        assert refused.get("code") == "NOT_ENOUGH_REPLICAS", refused
        # The other partitions go on.  (Not through the stream: its Producer's send() blocks
        # once partition 0 holds max_in_flight unacked batches, whatever the partition.)
        probe = LeaderProducer(apis, "t", producer_id=77)
        for i in range(60):
            probe.send(1 + i % (PARTITIONS - 1), [f"probe-{i}"], deadline_s=20)
        probe.close()
        others = [api for i, api in enumerate(apis) if i != victim]
        wait_for(lambda: time.time() > shrunk_at + 2, 3, what="two seconds on one replica")
        assert leader_of(others, "t", 0) == victim, "a live leader is never replaced"

        for host in followers:
            cluster.net.heal_between(cluster.hosts[victim], host)
        assert stream.acks_since(0, cut_at + 0.5) == 0, "acks=all nobody else could have had"
        wait_in_sync(apis, "t", PARTITIONS, 3, timeout=45)
        healed_at = time.time()
        wait_for(lambda: stream.acks_since(0, healed_at) >= 50, 30,
                 what="partition 0 taking acks=all again")
        stream.finish()
    finally:
        stream.close()
        cluster.stop()
    acked = stream.records() + probe.acked
    logs = check_replicas(cluster.brokers, "t", PARTITIONS, acked)
    assert sum(len(copy) for copy in logs["0"].values()) == len(acked), \
        "every record acknowledged, each once, and nothing refused stored"
