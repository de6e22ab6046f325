"""The wire protocol of docs/protocol.md, spoken by hand, against a broker in a cluster.

Every test of ``tests/integration/test_raw_protocol.py`` runs again here, unchanged, against
a broker that joined a cluster through ZooKeeper: the cluster's own code paths (topics
created by the controller, partitions with a leader epoch and an ISR, groups kept by the
coordinator in the replicated offsets topic) must answer a client written from the document
exactly as a single broker does. The cluster has one broker, so it leads every partition and
a client that speaks to one endpoint needs no routing (routing has its own tests in
``test_client_routing.py``); where the answer of a cluster differs by design, the test says
so and checks the cluster's answer instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from tests.cluster.test_groups_coordinator import find_coordinator
from tests.helpers import BrokerProcess
from tests.integration.test_raw_protocol import *  # noqa: F403 (the tests, collected again)
from tests.integration.test_raw_protocol import RawClient, context  # noqa: F401

# `poll` and `seek` are a single broker's (the broker keeps the member's positions); a
# cluster answers them BAD_REQUEST by design (docs/protocol.md §20: a member keeps its own
# positions and fetches from the leaders), proven below. These tests are about poll alone:
POLL_TESTS = (
    "test_a_group_member_polls_commits_and_describe_group_shows_lag_zero",
    "test_a_new_member_rebalances_wakes_a_parked_poll_and_fences_commits",
    "test_a_parked_poll_is_answered_within_half_the_session_and_the_member_stays",
    "test_a_streaming_poll_answers_each_arrival_until_its_replies_run_out",
    "test_a_streaming_poll_ends_at_its_deadline_and_when_its_bytes_are_spent",
    "test_a_streaming_poll_sends_at_once_what_the_log_already_holds",
    "test_a_req_socket_cannot_stream",
    "test_start_latest_is_fixed_when_the_partition_is_assigned",
    "test_a_poll_answers_raw_records_and_an_unknown_member_is_not_member",
)
for _name in POLL_TESTS:
    del globals()[_name]


@pytest.fixture
def broker(one_broker_cluster: BrokerProcess) -> BrokerProcess:
    return one_broker_cluster


GROUP_OPS = {"join", "heartbeat", "commit", "leave", "release", "describe_group",
             "delete_group"}


class ClusterRawClient(RawClient):
    """A client of one broker of a cluster, as docs/protocol.md §20 says one behaves: a
    group's requests go where ``find_coordinator`` says, asked once per group first (the
    first ask creates ``__rail_offsets``; its answer must be this broker, the only one)."""

    def __init__(self, endpoint: str, ctx: zmq.Context) -> None:
        super().__init__(endpoint, ctx)
        self.endpoint = endpoint
        self.found: set[str] = set()

    def send(self, op: str, **fields: Any) -> int:
        group = fields.get("group")
        if op in GROUP_OPS and isinstance(group, str) and group not in self.found:
            coordinator, _ = find_coordinator(self.endpoint, group)
            assert coordinator == 1, coordinator
            self.found.add(group)
        return super().send(op, **fields)


@pytest.fixture
def client(broker: BrokerProcess, context: zmq.Context) -> Iterator[RawClient]:  # noqa: F811
    c = ClusterRawClient(broker.api, context)
    yield c
    c.close()


def test_poll_and_seek_are_refused_in_a_cluster_and_join_commit_describe_are_served(
        client: RawClient) -> None:
    client.ok("create_topic", topic="orders", partitions=2)
    joined = client.ok("join", group="kitchen", topics=["orders"], member_id="k-1")
    assert sorted(map(tuple, joined["assignment"])) == [("orders", 0), ("orders", 1)]
    for op, fields in (("poll", {}), ("seek", {"topic": "orders", "partition": 0,
                                              "offset": 0})):
        refused = client.call(op, group="kitchen", member_id="k-1", **fields)
        assert refused["code"] == "BAD_REQUEST" and "find_coordinator" in refused["message"]
    client.ok("produce", topic="orders", partition=0, records=[["a"], ["b"]], acks="all")
    client.ok("commit", group="kitchen", member_id="k-1", generation=joined["generation"],
              offsets=[["orders", 0, 2]])
    parts = {d["partition"]: d for d in client.ok("describe_group", group="kitchen")["partitions"]}
    assert (parts[0]["committed"], parts[0]["lag"], parts[0]["position"]) == (2, 0, None)


def test_clients_cannot_write_grow_or_trim_the_offsets_topic(client: RawClient) -> None:
    """``__rail_offsets`` is the coordinators' own (as Kafka refuses appends to and record
    deletion from its internal topics): a produce there would move a group's offsets past
    its generation checks, and more partitions would send groups to partitions that do not
    hold their offsets.  All were accepted before."""
    client.ok("create_topic", topic="orders", partitions=1)
    joined = client.ok("join", group="kitchen", topics=["orders"], member_id="k-1")
    client.ok("produce", topic="orders", partition=0, records=[["a"], ["b"]], acks="all")
    client.ok("commit", group="kitchen", member_id="k-1", generation=joined["generation"],
              offsets=[["orders", 0, 2]])
    internal = "__rail_offsets"
    forged = [[["kitchen", "orders", 0], ["kitchen", "orders", 0]]]
    for op, fields in (
            ("produce", {"topic": internal, "partition": 0, "records": forged}),
            ("create_partitions", {"topic": internal, "partitions": 16}),
            ("delete_records", {"topic": internal, "partition": 0, "offset": -1}),
            ("delete_topic", {"topic": internal})):
        refused = client.call(op, **fields)
        assert refused["code"] == "BAD_REQUEST", (op, refused)
        assert "committed offsets" in refused["message"], refused
    results = client.ok("produce_batches", batches=[[internal, 0, -1, forged],
                                                    ["orders", 0, -1, [["c"]]]])["results"]
    assert results[0][3] == "BAD_REQUEST" and results[1][3] == ""
    meta = client.ok("metadata", topics=[internal])["topics"][0]
    assert len(meta["partitions"]) == 8
    parts = client.ok("describe_group", group="kitchen")["partitions"]
    assert [(d["partition"], d["committed"]) for d in parts] == [(0, 2)]
