"""A consumer-group member in a cluster: membership and commits at the group's coordinator,
data fetched from each partition's leader, positions kept here.

``Consumer("tcp://a,tcp://b")`` (or one endpoint of a cluster) builds one of these; its API
is the ``Consumer``'s.  How it works (docs/cluster.md, "Consumer groups"):

- ``find_coordinator`` on any broker names the coordinator; ``join``, ``heartbeat`` and
  ``commit`` go there.  ``NOT_COORDINATOR``, a coordinator that stops answering, or
  ``NOT_MEMBER`` (a new coordinator does not know us: membership is not replicated) send
  the member to find the coordinator again and rejoin, as Kafka's clients do.
- A rejoin forgets what was polled and not committed: fetching restarts at the committed
  offsets, so those events come again (at least once), and no commit sent before the
  rejoin is sent after it (another member may own the partition in between and commit
  past it: resending would move the offset back).
- The heartbeat thread's replies carry the generation and assignment: a rebalance is seen
  within a heartbeat interval (a commit refused as ``STALE_GENERATION`` sees it at once).
- Each assigned partition has one ``fetch`` parked at its leader (one connection per
  leader), from the member's position; it starts at the committed offset
  (``describe_group``) or, for none, at the start or end (``start``).  ``NOT_LEADER``, a
  dropped connection or a fetch unanswered for too long sends the partition to wait for
  metadata that names a live leader.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import zmq

from brokerd import protocol as p
from runtime.connection import DEFAULT_BROKER, BrokerError, Connection, keep_error
from runtime.consumer import Batch, Consumer, batches_of_fetch
from runtime.routing import bootstrap_list, call_any, leaders_of, metadata_from_any

TP = tuple[str, int]
_fetch_decoder = msgspec.msgpack.Decoder(p.FetchReply | p.ErrorReply)

FETCH_WAIT_MS = 500  # how long a fetch stays parked at a leader with nothing to read
FETCH_LOST_S = 3.0  # a fetch unanswered this long past its wait: the leader is gone
REFRESH_S = 0.2  # metadata is asked again at most this often while a partition waits
CALL_TIMEOUT_S = 2.0  # one attempt at the coordinator (find, join, describe)
# The coordinator moved, is loading, or does not answer, or its disk refused the commit
# (it has withdrawn from the cluster: docs/cluster.md): find it again and rejoin.
COORDINATOR_GONE = frozenset({"NOT_COORDINATOR", "COORDINATOR_LOADING", "UNAVAILABLE",
                              "STORAGE_ERROR"})
# A fetch refused for these waits for metadata that names another leader.
LEADER_GONE = frozenset({"NOT_LEADER", "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH",
                         "UNAVAILABLE", "UNKNOWN_TOPIC", "UNKNOWN_PARTITION"})


def find_coordinator(endpoints: list[str], context: zmq.Context, group: str,
                     timeout_s: float) -> p.FindCoordinatorReply:
    """The group's coordinator, from the first of ``endpoints`` that names one."""
    return call_any(endpoints, context, p.FindCoordinator(group=group), timeout_s,
                    COORDINATOR_GONE)


class ClusterConsumer(Consumer):
    """A member of consumer group ``group`` in a cluster; see the module docstring."""

    CLUSTERED = True

    def __init__(self, broker: str, **kwargs: Any) -> None:
        self._bootstrap = bootstrap_list(broker, DEFAULT_BROKER)
        self._brokers: list[str] = []
        self._leaders: dict[TP, str | None] = {}
        self._links: dict[str, Connection] = {}  # fetch connections, by leader endpoint
        self._poller: zmq.Poller | None = None
        self._fetch_at: dict[TP, int] = {}  # next offset to fetch, once known
        self._fetching: dict[TP, tuple[str, int, float]] = {}  # (leader, request id, sent at)
        self._asked: dict[tuple[str, int], TP] = {}  # (leader, request id) -> partition
        self._waiting: set[TP] = set()  # no live leader known: wait for metadata
        self._clamp: set[TP] = set()  # fetched out of range: start again within the log
        self._refresh_at = self._starts_at = 0.0
        self._lost_at = 0.0  # when the coordinator was last seen gone
        self._heard: tuple[float, int, list[tuple[str, int]]] | None = None
        self._context = zmq.Context.instance()
        coordinator = find_coordinator(self._bootstrap, self._context, kwargs["group"],
                                       min(kwargs.get("timeout_s", 10.0), CALL_TIMEOUT_S))
        super().__init__(coordinator.api, **kwargs)

    # -- membership -------------------------------------------------------------------
    def _join(self) -> None:
        """Join at the coordinator, finding it again first when it moved or went away."""
        self._forget_progress()
        deadline = time.monotonic() + self.conn.timeout_s
        pause = 0.05
        while True:
            try:
                if self._lost_at > self._joined_at:
                    self._move_to(find_coordinator(self._brokers + self._bootstrap,
                                                   self._context, self.group,
                                                   CALL_TIMEOUT_S).api)
                self._joined_at = time.monotonic()
                reply = self.conn.call(p.Join(
                    group=self.group, topics=self.topics, member_id=self.member_id,
                    start=self.start, session_timeout_ms=self.session_timeout_ms,
                    client_id=self.client_id,
                    rebalance_timeout_ms=self.hooks.rebalance_timeout_ms), timeout_s=CALL_TIMEOUT_S)
                break
            except BrokerError as exc:
                if exc.code not in COORDINATOR_GONE:
                    raise
                self._lost_at = time.monotonic()  # the next try (or poll) finds it again
                if self._lost_at > deadline:
                    raise
                time.sleep(pause)
                pause = min(1.0, pause * 2)
        self.member_id = reply.member_id
        self._heartbeat_interval_s = reply.heartbeat_interval_ms / 1000
        self._heard = None
        self.generation = -1  # adopted whatever it is: a new coordinator counts from 1
        self._set_assignment(reply.generation, reply.assignment)

    def _move_to(self, endpoint: str) -> None:
        """Talk to the coordinator at ``endpoint`` from now on."""
        if endpoint == self.conn.endpoint:
            return
        errors = self.conn.async_errors
        self.conn.close()
        self.conn = Connection(endpoint, context=self._context, timeout_s=self.conn.timeout_s,
                               end_waits_on_drop=True)
        self.conn.async_errors = errors

    def _forget_progress(self) -> None:
        super()._forget_progress()
        for tp in list(self._fetching):
            self._drop_fetch(tp)
        self._fetch_at.clear()

    def _set_assignment(self, generation: int, assignment: list[tuple[str, int]]) -> None:
        super()._set_assignment(generation, assignment)
        for tp in [tp for tp in self._fetch_at if tp not in self._owned]:
            del self._fetch_at[tp]
        for tp in [tp for tp in self._fetching if tp not in self._owned]:
            self._drop_fetch(tp)
        self._waiting &= self._owned

    def _heartbeat_loop(self) -> None:
        conn: Connection | None = None
        try:
            while not self._closed.wait(self._heartbeat_interval_s):
                endpoint = self.conn.endpoint  # the poll thread moves it to a new coordinator
                if conn is None or conn.endpoint != endpoint:
                    if conn is not None:
                        conn.close()
                    conn = Connection(endpoint, context=self._context,
                                      timeout_s=self._heartbeat_interval_s * 2,
                                      end_waits_on_drop=True)
                sent_at = time.monotonic()
                try:
                    reply = conn.call(p.Heartbeat(group=self.group, member_id=self.member_id))
                except BrokerError as exc:
                    if exc.code == "NOT_MEMBER":
                        self._forgotten_at = sent_at
                    elif exc.code in COORDINATOR_GONE:
                        self._lost_at = max(self._lost_at, sent_at)
                    continue
                self._heard = (sent_at, reply.generation, reply.assignment)
        finally:
            if conn is not None:
                conn.close()

    def _membership(self) -> None:
        """Act on what the heartbeats learned: rejoin, or take a new assignment."""
        if self._forgotten_at > self._joined_at or self._lost_at > self._joined_at:
            try:
                self._join()
            except BrokerError as exc:
                if exc.code not in COORDINATOR_GONE:
                    raise
                return  # still no coordinator: the next poll tries again
        heard = self._heard
        if heard is not None and heard[0] > self._joined_at and heard[1] > self.generation:
            self._set_assignment(heard[1], heard[2])

    def _refresh_assignment(self) -> None:
        try:
            reply = self.conn.call(p.Heartbeat(group=self.group, member_id=self.member_id),
                                   timeout_s=CALL_TIMEOUT_S)
        except BrokerError as exc:
            if exc.code != "NOT_MEMBER" and exc.code not in COORDINATOR_GONE:
                raise
            if exc.code in COORDINATOR_GONE:
                self._lost_at = time.monotonic()
            self._join()
            return
        self._set_assignment(reply.generation, reply.assignment)

    # -- committing -------------------------------------------------------------------
    def commit(self, offsets: dict[tuple[str, int], int] | None = None, sync: bool = True) -> None:
        """As ``Consumer.commit``.  A sync commit the coordinator cannot take (it moved, is
        loading, or does not answer) finds it again and rejoins instead of raising: the
        events since the last acknowledged commit come again."""
        try:
            super().commit(offsets, sync)
        except BrokerError as exc:
            if not sync or exc.code not in COORDINATOR_GONE:
                raise
            self._lost_at = time.monotonic()
            self._join()

    def _failed(self, rid: int, items: list[tuple[str, int, int]], exc: BrokerError,
                sent_at: float | None = None) -> None:
        if exc.code not in COORDINATOR_GONE:
            super()._failed(rid, items, exc, sent_at)
            return
        # The next poll finds the coordinator and rejoins; the commit goes with the join.
        for t, part, _ in items:
            if self._sent.get((t, part), (0, 0))[0] == rid:
                del self._sent[(t, part)]
        self._lost_at = max(self._lost_at, sent_at or time.monotonic())

    # -- fetching ---------------------------------------------------------------------
    def poll_batches(self, timeout_s: float = 1.0) -> list[Batch]:
        """The next records of the assigned partitions, a ``Batch`` per stored batch (maybe
        none after ``timeout_s``): see ``Consumer.poll_batches``; ``poll`` is built on it."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._membership()
            wait_until = self._tend_commits(deadline)
            self._fetch_all()
            if self._waiting or len(self._fetch_at) < len(self._owned):
                wait_until = min(wait_until, time.monotonic() + REFRESH_S)
            batches = self._receive(max(0.0, wait_until - time.monotonic()))
            if batches:
                self._fetch_all()  # the next fetches are on their way while the caller works
                return batches
            if self._pending:  # nothing came for a moment: send what is held now
                self._send_pending()
            if time.monotonic() >= deadline:
                return []

    def _fetch_all(self) -> None:
        """A fetch parked at its leader for every assigned partition that has none."""
        missing = [tp for tp in self.assignment if tp not in self._fetch_at]
        if missing and time.monotonic() >= self._starts_at:
            self._starts_at = time.monotonic() + REFRESH_S
            self._find_starts(missing)
        if self._waiting or any(self._leaders.get(tp) is None for tp in self.assignment):
            self._refresh_leaders()
        now = time.monotonic()
        for tp in self.assignment:
            sent = self._fetching.get(tp)
            if sent is not None:
                if now - sent[2] < FETCH_WAIT_MS / 1000 + FETCH_LOST_S:
                    continue
                self._drop_fetch(tp)  # no answer: the leader is gone (or paused)
                self._waiting.add(tp)
                continue
            offset = self._fetch_at.get(tp)
            leader = self._leaders.get(tp)
            if offset is None or leader is None or tp in self._waiting:
                continue
            link = self._link(leader)
            rid = link.send(p.Fetch(topic=tp[0], partition=tp[1], offset=offset,
                                    max_bytes=self.max_bytes, max_wait_ms=FETCH_WAIT_MS))
            self._fetching[tp] = (leader, rid, now)
            self._asked[(leader, rid)] = tp

    def _receive(self, timeout_s: float) -> list[Batch]:
        """The batches of the fetch replies that come within ``timeout_s``."""
        self._check_links()
        if not self._links:
            time.sleep(timeout_s)
            return []
        if self._poller is None:
            self._poller = zmq.Poller()
            for link in self._links.values():
                self._poller.register(link.socket, zmq.POLLIN)
        ready = dict(self._poller.poll(max(0, int(timeout_s * 1000))))
        batches: list[Batch] = []
        for endpoint, link in list(self._links.items()):
            if link.socket not in ready:
                continue
            while link.readable():
                rid, body = link.recv_ready()
                tp = self._asked.pop((endpoint, rid), None)
                if tp is None or self._fetching.get(tp, ("", 0))[1] != rid:
                    continue  # for a partition dropped or sought since
                del self._fetching[tp]
                batches.extend(self._fetched(tp, _fetch_decoder.decode(body)))
        return batches

    def _fetched(self, tp: TP, reply: p.FetchReply | p.ErrorReply) -> list[Batch]:
        if isinstance(reply, p.ErrorReply):
            if reply.code == "OFFSET_OUT_OF_RANGE":
                self._fetch_at.pop(tp, None)  # found again: the committed offset, clamped
                self._clamp.add(tp)
            elif reply.code in LEADER_GONE:
                self._waiting.add(tp)
            else:
                keep_error(self.conn.async_errors, BrokerError(reply.code, reply.message))
            return []
        if tp not in self._owned or self._fetch_at.get(tp) != reply.offset:
            return []
        got = batches_of_fetch(reply)
        if got:
            last = got[-1]
            self._fetch_at[tp] = self.positions[tp] = last.base_offset + len(last.records)
        return got

    def _drop_fetch(self, tp: TP) -> None:
        leader, rid, _ = self._fetching.pop(tp)
        self._asked.pop((leader, rid), None)

    def _link(self, endpoint: str) -> Connection:
        link = self._links.get(endpoint)
        if link is None:
            link = self._links[endpoint] = Connection(
                endpoint, context=self._context, timeout_s=self.conn.timeout_s,
                watch_reconnects=True)
            self._poller = None
        return link

    def _check_links(self) -> None:
        """Fetches written to a connection that dropped get no reply: they wait for a
        leader again."""
        for endpoint, link in self._links.items():
            if link.dropped():
                for tp in [tp for tp, sent in self._fetching.items() if sent[0] == endpoint]:
                    self._drop_fetch(tp)
                    self._waiting.add(tp)

    def _refresh_leaders(self) -> None:
        """Ask any broker for metadata (at most every REFRESH_S); a waiting partition whose
        leader it names, on a connection that is up, fetches again."""
        now = time.monotonic()
        if now < self._refresh_at:
            return
        self._refresh_at = now + REFRESH_S
        try:
            meta = metadata_from_any(self._brokers + self._bootstrap, self._context,
                                     sorted({t for t, _ in self.assignment} | set(self.topics)),
                                     min(1.0, self.conn.timeout_s))
        except BrokerError:
            return
        brokers, leaders = leaders_of(meta)
        if brokers:
            self._brokers = brokers
        self._leaders.update(leaders)
        for tp in list(self._waiting):
            leader = self._leaders.get(tp)
            if leader is not None and not (leader in self._links and self._links[leader].is_down()):
                self._waiting.discard(tp)

    def _find_starts(self, tps: list[TP]) -> None:
        """Where ``tps`` start: the committed offsets, else the start or end of each."""
        try:
            described = self.conn.call(p.DescribeGroup(group=self.group), timeout_s=CALL_TIMEOUT_S)
        except BrokerError as exc:
            if exc.code in COORDINATOR_GONE:
                self._lost_at = time.monotonic()
            return
        committed = {(gp.topic, gp.partition): gp.committed for gp in described.partitions}
        for tp in tps:
            offset = committed.get(tp)
            clamp = tp in self._clamp
            if offset is None or clamp:
                offset = self._bound(tp, offset)
                if offset is None:
                    continue
            self._clamp.discard(tp)
            self._fetch_at[tp] = offset

    def _bound(self, tp: TP, committed: int | None) -> int | None:
        """For a partition with no committed offset: its start or end (``start``); for one
        whose committed offset is out of range: the nearest end of the log."""
        leader = self._leaders.get(tp)
        if leader is None:
            self._refresh_leaders()
            leader = self._leaders.get(tp)
            if leader is None:
                return None
        conn = Connection(leader, context=self._context, timeout_s=CALL_TIMEOUT_S)
        try:
            first = conn.call(p.ListOffsets(topic=tp[0], partition=tp[1],
                                            timestamp=p.EARLIEST)).offset
            end = conn.call(p.ListOffsets(topic=tp[0], partition=tp[1],
                                          timestamp=p.LATEST)).offset
        except BrokerError:
            self._waiting.add(tp)
            return None
        finally:
            conn.close()
        if committed is None:
            return first if self.start == "earliest" else end
        return min(max(committed, first), end)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read ``topic[partition]`` from ``offset`` next (it must be assigned to us)."""
        tp = (topic, partition)
        if tp not in self._owned:
            raise BrokerError("BAD_REQUEST", f"{topic}[{partition}] is not assigned to this member")
        if tp in self._fetching:
            self._drop_fetch(tp)
        self._fetch_at[tp] = self.positions[tp] = offset

    def close(self) -> None:
        super().close()
        for link in self._links.values():
            link.close()
        self._links.clear()
