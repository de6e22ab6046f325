"""Where a partition lives in a cluster: metadata from whichever broker answers, and the
leader's endpoint per partition.  Shared by the producer and the cluster consumer."""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Iterator
from typing import Any, cast

import zmq

from brokerd import protocol as p
from runtime.connection import BrokerError, BrokerUnavailable, Connection

PROBE_S = 0.3  # a TCP connect that takes longer than this counts as refused (refusing)


def bootstrap_list(broker: str, default: str) -> list[str]:
    """``"tcp://a,tcp://b"`` as a list of endpoints (``default`` when empty)."""
    return [e.strip() for e in broker.split(",") if e.strip()] or [default]


def call_any(endpoints: list[str], context: zmq.Context, request: Any, timeout_s: float,
             retriable: frozenset[str] = frozenset({"UNAVAILABLE"})) -> Any:
    """``request``'s reply from the first of ``endpoints`` that answers it, each asked on a
    connection of its own (so that no other request's replies interleave); a refusal in
    ``retriable`` moves on to the next one.  The last error if none answers.  Endpoints
    whose port refuses connections are asked last (``refusing``).  All within
    ``timeout_s``: each but the last is given ANY_BROKER_S at most (a broker killed after
    it took the request must not hold up the others' answer for the whole timeout)."""
    error: BrokerError = BrokerUnavailable(",".join(endpoints), timeout_s)
    deadline = time.monotonic() + timeout_s
    unique = list(dict.fromkeys(endpoints))
    for i, endpoint in enumerate(_refusing_last(unique)):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn = Connection(endpoint, context=context,
                          timeout_s=left if i == len(unique) - 1 else min(left, ANY_BROKER_S))
        try:
            return conn.call(request)
        except BrokerError as exc:
            if exc.code not in retriable:
                raise
            error = exc
        finally:
            conn.close()
    raise error


def _refusing_last(endpoints: list[str]) -> Iterator[str]:
    """``endpoints`` in order, those ``refusing`` (looked at one by one, as reached)
    after the others."""
    if len(endpoints) < 2:
        yield from endpoints
        return
    refused = []
    for endpoint in endpoints:
        if refusing(endpoint):
            refused.append(endpoint)
        else:
            yield endpoint
    yield from refused


def refusing(endpoint: str) -> bool:
    """Whether ``endpoint`` (``tcp://host:port``) refuses TCP connections now: a broker
    that is down.  ZeroMQ would keep retrying such a connection in silence, and a request
    sent there waits for its whole timeout (seconds per dead broker in a bootstrap list,
    for each metadata or coordinator look-up); a refused connect takes microseconds.  A
    host that does not answer at all counts as refusing after PROBE_S."""
    match = re.fullmatch(r"tcp://\[?([^\]]+?)\]?:(\d+)", endpoint.strip())
    if match is None or match.group(1) == "*":
        return False
    try:
        with socket.create_connection((match.group(1), int(match.group(2))), timeout=PROBE_S):
            return False
    except OSError:
        return True


def metadata_from_any(endpoints: list[str], context: zmq.Context, topics: list[str] | None,
                      timeout_s: float) -> p.MetadataReply:
    """Metadata from the first of ``endpoints`` that answers."""
    return cast(p.MetadataReply, call_any(endpoints, context, p.Metadata(topics=topics),
                                          timeout_s))


def leaders_of(meta: p.MetadataReply) -> tuple[list[str], dict[tuple[str, int], str | None]]:
    """The live brokers' API endpoints, and each partition's leader endpoint (None while
    it has no live leader).  A single broker's metadata names no brokers: both empty."""
    if not meta.brokers:
        return [], {}
    by_id = {b.id: b.api for b in meta.brokers}
    leaders = {(topic.name, part.partition): by_id.get(part.leader)
               for topic in meta.topics for part in topic.partitions}
    return list(by_id.values()), leaders


# Requests that only a group's coordinator answers, and those only a partition's leader.
_GROUP_OPS = (p.Join, p.Heartbeat, p.Leave, p.Commit, p.DescribeGroup, p.DeleteGroup)
_PARTITION_OPS = (p.Fetch, p.ListOffsets, p.DeleteRecords, p.Produce)
# Refusals after which the request goes again, to where fresh metadata points (a leader or
# coordinator whose disk refused a write has withdrawn: STORAGE_ERROR).
_MOVED = frozenset({"NOT_LEADER", "NOT_COORDINATOR", "COORDINATOR_LOADING", "NOT_CONTROLLER",
                    "FENCED_LEADER_EPOCH", "UNAVAILABLE", "STORAGE_ERROR"})
RETRY_S = 0.2
SETTLE_S = 0.02  # how often a new topic's metadata is looked at until every broker has it
ANY_BROKER_S = 3.0  # a request any broker answers goes to the next one after this long


class Router:
    """A connection to a cluster given by several endpoints, for one request at a time
    (``rail``, the supervisor): each request goes to the broker that serves it, the group's
    coordinator (``find_coordinator``), the partition's leader (metadata) or any live
    broker, and again elsewhere when it was refused as moved, until ``timeout_s``.
    ``list_groups`` asks every broker (each lists the groups it coordinates).  A
    ``create_topic`` is answered once every live broker names a leader for each of the
    topic's partitions (each learns of a new topic from ZooKeeper a moment after the one
    that created it), so the next request through the Router finds it wherever it goes."""

    def __init__(self, endpoints: str, context: zmq.Context | None = None,
                 timeout_s: float = 10.0) -> None:
        self.bootstrap = bootstrap_list(endpoints, endpoints)
        self.endpoint = ",".join(self.bootstrap)
        self.timeout_s = timeout_s
        self.context = context or zmq.Context.instance()
        self.async_errors: list[BrokerError] = []
        self._conns: dict[str, Connection] = {}
        self._brokers: list[str] = []
        self._leaders: dict[tuple[str, int], str | None] = {}
        self._coordinators: dict[str, str] = {}
        self._turn = 0  # which broker takes the requests any broker answers
        self._ids = itertools.count(1)
        self._sent: dict[int, tuple[Connection, int]] = {}

    def call(self, request: Any, timeout_s: float | None = None) -> Any:
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        if isinstance(request, p.ListGroups):
            return self._list_groups(request, deadline)
        if isinstance(request, p.Metadata):
            return self._metadata(request, deadline)
        while True:
            left = max(0.1, deadline - time.monotonic())
            endpoint = None
            try:
                endpoint = self._target(request, left)
                if not isinstance(request, _GROUP_OPS + _PARTITION_OPS):
                    left = min(left, ANY_BROKER_S)  # any broker will do: not a dead one's
                reply = self._conn(endpoint).call(request, left)  # whole timeout
                if isinstance(request, p.CreateTopic):
                    self._settle(request.topic, deadline)
                return reply
            except BrokerError as exc:
                if exc.code not in _MOVED:
                    raise
                self._forget(request, endpoint, exc)  # also when out of time: the next call
                if time.monotonic() + RETRY_S > deadline:  # must not go there again
                    raise
                time.sleep(RETRY_S)

    def send(self, request: Any) -> int:
        """Send to where ``request`` is served without waiting (pipelined, as
        ``Connection.send``); ``wait`` for the reply (not retried elsewhere)."""
        conn = self._conn(self._target(request, self.timeout_s))
        rid = next(self._ids)
        self._sent[rid] = (conn, conn.send(request))
        return rid

    def wait(self, request_id: int, timeout_s: float | None = None) -> Any:
        """The reply to ``request_id``; a refusal as moved (NOT_LEADER...) forgets where
        the request went, so the next one asks the cluster again."""
        conn, sent = self._sent.pop(request_id)
        try:
            return conn.wait(sent, timeout_s)
        except BrokerError as exc:
            if exc.code in _MOVED:
                self._leaders.clear()
                self._coordinators.clear()
            raise

    def forget(self, request_id: int) -> None:
        """Nobody will wait for the reply to ``request_id`` (sent again elsewhere)."""
        found = self._sent.pop(request_id, None)
        if found is not None:
            found[0].forget(found[1])

    def arrived(self, request_id: int, timeout_s: float) -> bool:
        """Whether the reply to ``request_id`` is in (waiting up to ``timeout_s``)."""
        conn, sent = self._sent[request_id]
        return conn.arrived(sent, timeout_s)

    def _target(self, request: Any, timeout_s: float) -> str:
        if isinstance(request, _GROUP_OPS):
            api = self._coordinators.get(request.group)
            if api is None:
                api = self._coordinators[request.group] = call_any(
                    self._brokers + self.bootstrap, self.context,
                    p.FindCoordinator(group=request.group), min(timeout_s, 2.0), _MOVED).api
            return api
        if isinstance(request, _PARTITION_OPS):
            tp = (request.topic, request.partition)
            if self._leaders.get(tp) is None:
                meta = metadata_from_any(self._brokers + self.bootstrap, self.context,
                                         [request.topic], min(timeout_s, 2.0))
                self._brokers, leaders = leaders_of(meta)
                self._leaders.update(leaders)
            leader = self._leaders.get(tp)
            if leader is not None:
                return leader
        candidates = list(dict.fromkeys(self._brokers + self.bootstrap))
        for _ in range(len(candidates) if len(candidates) > 1 else 0):
            endpoint = candidates[self._turn % len(candidates)]
            # Looked at before a connection is made, not on every request: one that did
            # not answer is dropped (_forget), so the next request looks again.
            if endpoint in self._conns or not refusing(endpoint):
                break
            self._turn += 1  # down: the next one (all down: the one after the last tried)
        return candidates[self._turn % len(candidates)]

    def _forget(self, request: Any, endpoint: str | None, exc: BrokerError) -> None:
        if isinstance(request, _GROUP_OPS):
            self._coordinators.pop(request.group, None)
        if isinstance(request, _PARTITION_OPS):
            self._leaders.pop((request.topic, request.partition), None)
        if endpoint is not None and exc.code == "UNAVAILABLE":
            self._drop(endpoint)
            self._turn += 1

    def _metadata(self, request: p.Metadata, deadline: float) -> p.MetadataReply:
        """Metadata whose partition offsets come from each partition's leader: a
        follower's high watermark may lag its leader's by a fetch."""
        meta = metadata_from_any(self._brokers + self.bootstrap, self.context, request.topics,
                                 max(0.1, deadline - time.monotonic()))
        self._brokers, leaders = leaders_of(meta)
        self._leaders.update(leaders)
        by_leader: dict[str, dict[tuple[str, int], p.PartitionInfo]] = {}
        for endpoint in {e for e in leaders.values() if e is not None}:
            if endpoint not in self._conns and refusing(endpoint):
                continue  # dead, not yet replaced: its partitions keep the first figures
            try:
                # A leader just killed is named until the controller moves its partitions
                # (seconds): each such call must not take the whole timeout.
                reply = self._conn(endpoint).call(
                    request, max(0.1, min(ANY_BROKER_S, deadline - time.monotonic())))
            except BrokerError:
                self._drop(endpoint)  # the next call looks whether it refuses first
                continue  # its partitions keep the first answer's figures
            by_leader[endpoint] = {(t.name, i.partition): i for t in reply.topics
                                   for i in t.partitions}
        for topic in meta.topics:
            topic.partitions = [by_leader.get(leaders.get((topic.name, i.partition)) or "", {})
                                .get((topic.name, i.partition), i) for i in topic.partitions]
        meta.id = request.id
        return meta

    def _settle(self, topic: str, deadline: float) -> None:
        """Wait until every live broker names a leader for each partition of ``topic``
        (until ``deadline``).  A broker that refuses connections or does not answer
        within ANY_BROKER_S is not waited for: it learns of the topic when it is back."""
        try:
            meta = metadata_from_any(self._brokers + self.bootstrap, self.context, [],
                                     max(0.1, deadline - time.monotonic()))
        except BrokerError:
            return  # created all the same; the next request finds its leaders
        self._brokers = [b.api for b in meta.brokers]
        waiting = list(self._brokers)
        while waiting and time.monotonic() < deadline:
            endpoint = waiting[0]
            if refusing(endpoint):  # (a TCP connect: create_topic is rare)
                self._drop(endpoint)
                waiting.pop(0)
                continue
            try:
                reply = self._conn(endpoint).call(
                    p.Metadata(topics=[topic]),
                    max(0.1, min(ANY_BROKER_S, deadline - time.monotonic())))
            except BrokerError as exc:
                if exc.code != "UNKNOWN_TOPIC":
                    self._drop(endpoint)
                    waiting.pop(0)
                    continue
                reply = None
            if reply is not None and all(part.leader >= 0
                                         for part in reply.topics[0].partitions):
                waiting.pop(0)
                continue
            time.sleep(SETTLE_S)

    def _list_groups(self, request: p.ListGroups, deadline: float) -> p.ListGroupsReply:
        meta = metadata_from_any(self._brokers + self.bootstrap, self.context, [],
                                 max(0.1, deadline - time.monotonic()))
        self._brokers = [b.api for b in meta.brokers] or self.bootstrap[:1]
        groups: set[str] = set()
        for endpoint in self._brokers:
            reply = self._conn(endpoint).call(p.ListGroups(),
                                              max(0.1, deadline - time.monotonic()))
            groups.update(reply.groups)
        return p.ListGroupsReply(id=request.id, groups=sorted(groups))

    def _conn(self, endpoint: str) -> Connection:
        conn = self._conns.get(endpoint)
        if conn is None:
            # Watched: a request out at a broker that stops (or dies) fails at once, and
            # goes again where the cluster now serves it, not after the whole timeout.
            conn = self._conns[endpoint] = Connection(endpoint, context=self.context,
                                                      timeout_s=self.timeout_s,
                                                      end_waits_on_drop=True)
        return conn

    def _drop(self, endpoint: str) -> None:
        """A broker that did not answer: a late reply must not meet the next request."""
        conn = self._conns.pop(endpoint, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


Link = Connection | Router
"""What ``connect`` gives: a request-at-a-time link to one broker or to a cluster."""


CLUSTER_PROBE_S = 2.0
"""The longest ``connect`` waits to learn whether one endpoint is a broker of a cluster."""


def connect(endpoints: str, context: zmq.Context | None = None,
            timeout_s: float = 10.0) -> Link:
    """A Connection to a single broker, or a Router over a cluster: given several
    endpoints, or one broker that names a cluster's brokers in its ``metadata`` (asked
    once: a cluster's group and partition requests must go where they are served, as a
    Kafka client finds its cluster from one bootstrap server). A broker that does not
    answer within CLUSTER_PROBE_S is taken for a single one; the caller's first call says why."""
    one = endpoints.strip(", ")
    if "," in one:
        return Router(endpoints, context=context, timeout_s=timeout_s)
    conn = Connection(one, context=context, timeout_s=timeout_s)
    try:
        meta = conn.call(p.Metadata(topics=[]), timeout_s=min(timeout_s, CLUSTER_PROBE_S))
    except BrokerError:
        return conn
    if not meta.brokers:
        return conn
    conn.close()
    return Router(one, context=context, timeout_s=timeout_s)
