"""One ``handle_<op>`` per request: decode once at the edge, then typed objects only.

``handle_frames`` turns ROUTER frames into a typed request (or a clear error reply), and
``dispatch`` matches it to its handler.  A handler returns the reply to send now, or None
when the reply is deferred (parked long poll, produce waiting for an fsync, acks=0).
Mixed into ``Broker``; runs on the loop thread only.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from brokerd import protocol as p
from brokerd.config import topic_config
from brokerd.describe import describe_group, topic_info
from brokerd.errors import (
    BadRequest,
    MessageTooLarge,
    NotLeader,
    RailError,
    StorageError,
    TooManyWaiting,
    TopicExists,
    UnknownOp,
    UnknownPartition,
    UnknownTopic,
)
from brokerd.log.batch import HEADER_SIZE, Record, decode_records, key_content
from brokerd.log.partition import now_ms
from brokerd.log.producers import DuplicateBatch
from brokerd.topics import check_name
from brokerd.waiters import Client, DurableAck, Waiter, topic_key

if TYPE_CHECKING:
    from brokerd.config import BrokerConfig
    from brokerd.groups import Coordinator
    from brokerd.log.offsets import OffsetStore
    from brokerd.log.partition import PartitionLog
    from brokerd.cluster.node import Cluster
    from brokerd.memory import Trimmer
    from brokerd.security import Security
    from brokerd.stats import Stats
    from brokerd.topics import Topic, TopicRegistry
    from brokerd.waiters import AckQueue, WaitingRoom

log = logging.getLogger("brokerd")
REQUEST = msgspec.msgpack.Decoder(p.Request)
_OP_OF = {t: t.__struct_config__.tag for t in p.Request.__args__}  # type: ignore[attr-defined]
_STR_OR_BIN = frozenset(range(0xA0, 0xC0)) | {0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6}


class _Envelope(msgspec.Struct):
    """Just enough of a bad request to answer it: its id and op, if it has them."""

    id: Any = 0
    op: Any = None


ENVELOPE = msgspec.msgpack.Decoder(_Envelope)
CREATE_WAIT_MS = 5_000
"""The longest a cluster's ``create_topic`` waits for this broker to see the leaders."""


def peek_envelope(body: bytes | memoryview) -> tuple[int, Any]:
    try:
        env = ENVELOPE.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return 0, None
    request_id = env.id if isinstance(env.id, int) and -2**63 <= env.id < 2**64 else 0
    return request_id, env.op


class Handlers:
    """The request handlers of ``Broker``, which provides the state declared here."""

    config: BrokerConfig
    topics: TopicRegistry
    offsets: OffsetStore
    coordinator: Coordinator
    waiting: WaitingRoom
    acks: AckQueue
    stats: Stats
    memory: Trimmer
    cluster: Cluster | None
    endpoints: tuple[str, str]
    security: Security | None

    def send(self, client: Client, reply: p.Reply) -> None:
        raise NotImplementedError

    def send_error(self, client: Client, request_id: int, exc: RailError) -> None:
        raise NotImplementedError

    def sessions_changed(self) -> None:
        raise NotImplementedError

    def appended(self, topic: Topic, partition: int) -> None:
        raise NotImplementedError

    # -- frames to typed requests -----------------------------------------------------
    def handle_frames(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        if len(frames) == 2:
            client, body = (identity, False), frames[1].buffer
        elif len(frames) == 3 and len(frames[1]) == 0:
            client, body = (identity, True), frames[2].buffer
        else:
            self.stats.count("bad_frames")
            self.send_error((identity, False), 0, BadRequest(
                f"expected [body] (DEALER) or ['', body] (REQ), got {len(frames) - 1} frames"))
            return
        self.stats.count("requests")
        if len(body) > self.config.max_request_bytes:
            request_id, _ = peek_envelope(body)
            self.send_error(client, request_id, MessageTooLarge(
                f"request of {len(body)} bytes is over the {self.config.max_request_bytes}"
                "-byte limit: send smaller batches"))
            return
        try:
            request = REQUEST.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError) as exc:
            self._reject(client, body, exc)
            return
        self.stats.ops[_OP_OF[type(request)]] += 1
        try:
            if self.security is not None:  # the one ACL check, before any handler
                self.security.authorize(request, frames[-1])
            reply = self.dispatch(request, client)
        except RailError as exc:
            self.send_error(client, request.id, exc)
            return
        except Exception as exc:  # a bug must not take the broker down for everyone
            log.exception("internal error handling %s", type(request).__name__)
            self.send_error(client, request.id, RailError(f"internal error: {exc!r}"))
            return
        if reply is not None:
            self.send(client, reply)

    def _reject(self, client: Client, body: Any, exc: Exception) -> None:
        request_id, op = peek_envelope(body)
        if isinstance(op, str) and op not in p.OPS:
            error: RailError = UnknownOp(
                f"unknown op {op[:40]!r}; known ops: {', '.join(p.OPS)}")
        elif isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
            error = BadRequest(f"body is not valid msgpack: {exc}")
        else:
            error = BadRequest(f"invalid {op if isinstance(op, str) else 'request'}: {exc}")
        self.send_error(client, request_id, error)

    def dispatch(self, request: p.Request, client: Client) -> p.Reply | None:
        match request:
            case p.Produce():
                return self.handle_produce(request, client)
            case p.ProduceBatches():
                return self.handle_produce_batches(request, client)
            case p.Fetch():
                return self.handle_fetch(request, client)
            case p.Poll():
                return self.handle_poll(request, client)
            case p.Commit():
                return self.handle_commit(request, client)
            case p.Heartbeat():
                return self.handle_heartbeat(request)
            case p.Join():
                return self.handle_join(request)
            case p.Leave():
                return self.handle_leave(request)
            case p.Seek():
                return self.handle_seek(request)
            case p.CreateTopic():
                return self.handle_create_topic(request, client)
            case p.DeleteTopic():
                return self.handle_delete_topic(request)
            case p.Metadata():
                return self.handle_metadata(request)
            case p.ListOffsets():
                return self.handle_list_offsets(request)
            case p.DescribeGroup():
                return self.handle_describe_group(request)
            case p.ListGroups():
                return p.ListGroupsReply(id=request.id, groups=self.coordinator.known_groups())
            case p.Stats():
                return p.StatsReply(id=request.id, stats=self.stats.report(self))
            case p.Ping():
                return p.PingReply(id=request.id, version=p.PROTOCOL_VERSION, time_ms=now_ms())
            case p.CreatePartitions():
                return self.handle_create_partitions(request)
            case p.DeleteRecords():
                return self.handle_delete_records(request, client)
            case p.DeleteGroup():
                return self.handle_delete_group(request, client)
            case p.Release():
                return self.handle_release(request)
            case p.FindCoordinator():
                return self.handle_find_coordinator(request)
            case p.ReplicaFetch():
                return self._clustered().handle_replica_fetch(request, client)
            case p.ReplicaFetchMany():
                return self._clustered().handle_replica_fetch_many(request, client)
            case p.OffsetForLeaderEpoch():
                return self._clustered().handle_offset_for_leader_epoch(request)
            case (p.ReassignPartitions() | p.ListReassignments() | p.ElectLeaders()
                  | p.CancelReassignments()):
                return self._clustered().reassigner.handle(request)
        raise UnknownOp(f"unhandled op {type(request).__name__}")

    # -- produce ----------------------------------------------------------------------
    def handle_produce(self, req: p.Produce, client: Client) -> p.Reply | None:
        existing = self.topics.topics.get(req.topic)
        if existing is None:  # a topic's name was checked when it was created
            check_name(req.topic)
        if self.cluster is not None:
            self.cluster.check_client_write(req.topic)
        if req.producer_id and (req.partition is None or req.sequence < 0):
            raise BadRequest("an idempotent produce (producer_id) must name its partition "
                             "and carry its sequence number (>= 0)")
        if req.expected_offset is not None and req.partition is None:
            raise BadRequest("a produce with expected_offset must name its partition")
        config = existing.config if existing else self.config.topic_defaults
        records = _decode_batch(req.records, config.max_batch_bytes)
        if existing is None and self.cluster is not None:
            # before the partition check: the topic may exist with more partitions than
            # the defaults, its local copy not made yet
            raise NotLeader(f"no topic {req.topic!r} on this broker: a cluster creates topics "
                            "only with create_topic; refresh metadata")
        if req.partition is not None and req.partition >= config.partitions:
            raise UnknownPartition(f"topic {req.topic!r} has partitions "
                                   f"0..{config.partitions - 1}, not {req.partition}")
        topic = existing
        if topic is None:
            topic, created = self.topics.get_or_create(req.topic)
            if created:
                self.coordinator.topics_changed({topic.name})
        split: dict[int, tuple[bytes | msgspec.Raw, list[Record]]]
        if req.partition is not None:
            split = {req.partition: (req.records, records)}
        else:
            split = _split(topic, req.records, records)
        now = now_ms()
        offsets, needs, duplicate = [], [], False
        if self.cluster is not None:
            for index in split:
                self.cluster.check_produce(topic.name, index, req.acks)
        for index, (payload, recs) in split.items():
            base, dup, need = self._append(topic, index, payload, recs, req.producer_id,
                                           req.sequence, now, req.expected_offset)
            duplicate = duplicate or dup
            if base is not None:
                offsets.append((index, base, len(recs)))
            if need is not None:
                needs.append(need)
        if req.acks == 0:
            return None
        reply = p.ProduceReply(id=req.id, topic=topic.name, offsets=offsets, duplicate=duplicate)
        self._ack(client, reply, needs, req.acks == "all" or topic.config.fsync == "always")
        return None

    def _append(self, topic: Topic, index: int, payload: bytes | msgspec.Raw,
                recs: list[Record], producer_id: int, sequence: int, now: int,
                expected_offset: int | None = None
                ) -> tuple[int | None, bool, tuple[PartitionLog, int] | None]:
        """Append one partition's batch: (its base offset, whether it was a duplicate,
        what an acknowledgement must wait for).  A duplicate whose offsets the broker no
        longer knows has base None."""
        plog = topic.partition(index)
        first, highest = _timestamps(recs, now)
        try:
            base = plog.append(payload, len(recs), first, highest, producer_id, sequence, now,
                               expected_offset)
        except DuplicateBatch as dup:
            if dup.base_offset is None:
                return None, True, None
            return dup.base_offset, True, (plog, dup.base_offset + len(recs))
        except StorageError as exc:
            if self.cluster is not None and exc.__cause__ is not None:
                # a full disk, say: the partitions led here move to another replica
                self.cluster.storage_failed(exc.message, exc.__cause__)
            raise
        counters = topic.counters[index]
        counters.records_in += len(recs)
        counters.bytes_in += HEADER_SIZE + len(payload)
        self.appended(topic, index)
        return base, False, (plog, plog.end_offset)

    def _ack(self, client: Client, reply: p.Reply, needs: list[tuple[PartitionLog, int]],
             durable: bool) -> None:
        """Answer a produce once what it needs is durable (``durable``: fsynced, and in a
        cluster replicated), or right after this loop turn's deliveries."""
        if needs and durable:
            self.acks.add(DurableAck(client, reply, needs))
        else:  # sent once the loop has answered the polls this produce woke: they go first
            self.acks.after_delivery.append((client, reply))

    def handle_produce_batches(self, req: p.ProduceBatches, client: Client) -> p.Reply | None:
        """Each batch as a ``produce`` naming its partition would be, one reply for all."""
        if req.producer_id and any(b.sequence < 0 for b in req.batches):
            raise BadRequest("an idempotent produce_batches (producer_id) must carry every "
                             "batch's sequence number (>= 0)")
        now = now_ms()
        results: list[p.BatchResult] = []
        needs: list[tuple[PartitionLog, int]] = []
        durable = req.acks == "all"
        for batch in req.batches:
            try:
                topic = self.topics.get(batch.topic)
                if batch.partition >= len(topic.partitions):
                    raise UnknownPartition(f"topic {batch.topic!r} has partitions "
                                           f"0..{len(topic.partitions) - 1}, not {batch.partition}")
                records = _decode_batch(batch.records, topic.config.max_batch_bytes)
                if self.cluster is not None:
                    self.cluster.check_client_write(topic.name)
                    self.cluster.check_produce(topic.name, batch.partition, req.acks)
                base, duplicate, need = self._append(topic, batch.partition, batch.records,
                                                     records, req.producer_id, batch.sequence, now)
            except RailError as exc:
                results.append(p.BatchResult(-1, 0, False, exc.code, exc.message))
                continue
            results.append(p.BatchResult(-1 if base is None else base, len(records), duplicate))
            if need is not None:
                needs.append(need)
                durable = durable or topic.config.fsync == "always"
        if req.acks == 0:
            return None
        self._ack(client, p.ProduceBatchesReply(id=req.id, results=results), needs, durable)
        return None

    # -- fetch and poll ---------------------------------------------------------------
    def handle_fetch(self, req: p.Fetch, client: Client) -> p.Reply | None:
        topic = self.topics.get(req.topic)
        if self.cluster is not None:
            self.cluster.leading(req.topic, req.partition)
        reply = self._fetch_reply(topic, req)
        if req.max_wait_ms == 0 or _reply_bytes(reply.batches) >= max(req.min_bytes, 1):
            return reply
        def answer(final: bool) -> bool:
            try:
                again = self._fetch_reply(topic, req)
            except RailError as exc:
                self.send_error(client, req.id, exc)
                return True
            if final or _reply_bytes(again.batches) >= req.min_bytes:
                self.send(client, again)
                return True
            return False
        self._park(client, req.max_wait_ms, answer, [(topic.name, req.partition)], None)
        return None

    def _fetch_reply(self, topic: Topic, req: p.Fetch) -> p.FetchReply:
        plog = topic.partition(req.partition)
        batches = plog.read(req.offset, req.max_bytes)
        wire, size, records = _wire(batches, req.raw_records)
        counters = topic.counters[req.partition]
        counters.records_out += records
        counters.bytes_out += size
        return p.FetchReply(id=req.id, topic=topic.name, partition=req.partition,
                            offset=req.offset, start_offset=plog.start_offset,
                            end_offset=plog.visible_end, batches=wire)

    def handle_poll(self, req: p.Poll, client: Client) -> p.Reply | None:
        if self.cluster is not None:
            self._no_positions_in_cluster("poll")
        group, member = self.coordinator.member(req.group, req.member_id, _mono_ms())
        if req.replies > 1 and client[1]:
            raise BadRequest("a streaming poll (replies > 1) needs a DEALER socket: a REQ "
                             "socket takes one reply per request")
        stream = _Stream(req.replies, req.max_bytes)
        read = self._poll_reply(req, stream.budget)
        if req.max_wait_ms == 0:
            return read[0]
        if self._stream_on(req, client, stream, read):
            return None
        # A parked poll is not a heartbeat: answer it well before the session could expire.
        wait_ms = min(req.max_wait_ms, member.session_timeout_ms // 2)
        generation, incarnation = group.generation, member.incarnation
        def answer(final: bool) -> bool:
            if (member.incarnation != incarnation
                    or group.members.get(member.member_id) is not member):
                # A new join under this member id (or the member is gone): this poll's
                # process is an earlier incarnation, and what it would read here would
                # move the new one's positions past records it never sees.
                self.send(client, p.PollReply(id=req.id, generation=group.generation,
                                              assignment=[], partitions=[]))
                return True
            try:
                read = self._poll_reply(req, stream.budget)
                if final or read[0].generation != generation:
                    self.send(client, read[0])
                    return True
                return self._stream_on(req, client, stream, read)
            except RailError as exc:
                self.send_error(client, req.id, exc)
                return True
        keys = group.assignment_of(member.member_id)
        self._park(client, wait_ms, answer, keys, group.name)
        return None

    def _stream_on(self, req: p.Poll, client: Client, stream: _Stream,
                   read: tuple[p.PollReply, int, bool]) -> bool:
        """Send the reply of ``read`` if it has data, then what the log already holds past
        it (a read may stop short of the budget, at a segment's end); True once the poll is
        answered for good, False while it waits for more."""
        reply, used, behind = read
        while reply.partitions:
            more = stream.take(reply, used)
            self.send(client, reply)
            if not more:
                return True
            if not behind:  # every partition was read to its end: nothing to look for
                return False
            reply, used, behind = self._poll_reply(req, stream.budget)
        return False

    def _poll_reply(self, req: p.Poll, budget: int) -> tuple[p.PollReply, int, bool]:
        """The next records of the member's partitions within ``budget``, the payload bytes
        they take, and whether some partition holds more than was read."""
        left = budget
        group, member = self.coordinator.member(req.group, req.member_id, _mono_ms())
        assignment = group.assignment_of(member.member_id)
        order = assignment
        if len(assignment) > 1:  # take turns at who goes first, so none starves
            turn = self.stats.next_turn() % len(assignment)
            order = assignment[turn:] + assignment[:turn]
        out: list[p.PartitionData] = []
        behind = False
        for tp in order:
            if left <= 0:
                behind = True  # not looked at: maybe more
                break
            topic = self.topics.get(tp[0])
            plog = topic.partition(tp[1])
            end = plog.visible_end
            pos = group.positions.get(tp)
            if pos is None or not plog.start_offset <= pos <= end:
                pos = self.coordinator.position(group, tp)  # first poll, or retention/cut
            if pos >= end:
                continue
            batches = plog.read(pos, left)
            if not batches:
                continue
            wire, used, records = _wire(batches, req.raw_records)
            group.positions[tp] = after = batches[-1].header.next_offset
            behind = behind or after < end
            left -= used
            counters = topic.counters[tp[1]]
            counters.records_out += records
            counters.bytes_out += used
            out.append(p.PartitionData(topic=tp[0], partition=tp[1], offset=pos,
                                       end_offset=end, batches=wire))
        reply = p.PollReply(id=req.id, generation=group.generation, assignment=assignment,
                            partitions=out)
        return reply, budget - left, behind

    def _park(self, client: Client, wait_ms: int, answer: Any, keys: list,
              group: str | None, limited: bool = True) -> None:
        """Park a request until ``answer`` says it answered, or ``wait_ms`` passed.
        ``limited``: it counts against ``max_waiting_per_client`` (a follower's replica
        fetches do not: it parks one per partition it follows here, by design)."""
        if limited and self.waiting.count(client[0]) >= self.config.max_waiting_per_client:
            raise TooManyWaiting(
                f"{self.config.max_waiting_per_client} requests of this client are already "
                "parked: wait for their replies before sending more long polls")
        deadline = time.monotonic() + wait_ms / 1000
        self.waiting.park(Waiter(client, deadline, answer, keys, group))

    # -- groups -----------------------------------------------------------------------
    def handle_join(self, req: p.Join) -> p.Reply:
        if not req.topics:
            raise BadRequest("join needs at least one topic")
        for name in req.topics:
            check_name(name)
        if self._coordinating(req.group) is not None:
            for name in req.topics:  # a cluster creates topics only with create_topic
                if self.coordinator.logs.partition_count(name) is None:
                    raise UnknownTopic(f"unknown topic {name!r}: create it with create_topic")
        else:
            created = {name for name in req.topics if self.topics.get_or_create(name)[1]}
            self.coordinator.topics_changed(created)
        group, member = self.coordinator.join(
            req.group, req.member_id, req.topics, req.session_timeout_ms, req.start,
            req.client_id, _mono_ms(), rebalance_timeout_ms=req.rebalance_timeout_ms)
        if member.incarnation:  # a re-join: end what the earlier incarnation left parked
            self.waiting.group_changed(group.name)
        self.sessions_changed()
        return p.JoinReply(id=req.id, member_id=member.member_id, generation=group.generation,
                           assignment=group.assignment_of(member.member_id),
                           heartbeat_interval_ms=max(req.session_timeout_ms // 3, 50))

    def handle_heartbeat(self, req: p.Heartbeat) -> p.Reply:
        self._coordinating(req.group)
        group, member = self.coordinator.member(req.group, req.member_id, _mono_ms())
        return p.HeartbeatReply(id=req.id, generation=group.generation,
                                assignment=group.assignment_of(member.member_id))

    def handle_commit(self, req: p.Commit, client: Client) -> p.Reply | None:
        if self._coordinating(req.group) is not None:  # answered once replicated
            need = self.coordinator.commit(req.group, req.member_id, req.generation,
                                           req.offsets, _mono_ms())
            if need is None:  # nothing to store
                return p.CommitReply(id=req.id)
            self.acks.add(DurableAck(client, p.CommitReply(id=req.id), [need]))
            return None
        for topic, _, _ in req.offsets:
            self.topics.get(topic)
        try:
            self.coordinator.commit(req.group, req.member_id, req.generation, req.offsets,
                                    _mono_ms())
        except OSError as exc:
            raise StorageError(f"cannot store offsets: {exc}") from exc
        return p.CommitReply(id=req.id)

    def handle_seek(self, req: p.Seek) -> p.Reply:
        self._no_positions_in_cluster("seek")
        group, member = self.coordinator.member(req.group, req.member_id, _mono_ms())
        self.coordinator.seek(group, member.member_id, (req.topic, req.partition), req.offset)
        self.waiting.group_changed(group.name)  # a parked poll answers from the new position
        return p.SeekReply(id=req.id)

    def handle_release(self, req: p.Release) -> p.Reply:
        self._coordinating(req.group)
        released = self.coordinator.release(req.group, req.member_id,
                                            [(t, part) for t, part in req.partitions], _mono_ms())
        return p.ReleaseReply(id=req.id, released=released)

    def handle_leave(self, req: p.Leave) -> p.Reply:
        self._coordinating(req.group)
        self.coordinator.leave(req.group, req.member_id)
        return p.LeaveReply(id=req.id)

    def handle_describe_group(self, req: p.DescribeGroup) -> p.Reply:
        if self._coordinating(req.group) is not None:
            from brokerd.cluster.coordinator import describe
            return describe(self, req.group, req.id)  # type: ignore[arg-type]
        return describe_group(self, req)

    def handle_find_coordinator(self, req: p.FindCoordinator) -> p.Reply:
        if self.cluster is None:  # one broker coordinates every group
            return p.FindCoordinatorReply(id=req.id, coordinator=-1, api=self.endpoints[0])
        from brokerd.cluster.coordinator import find_coordinator
        broker_id, api = find_coordinator(self.cluster, req.group)
        return p.FindCoordinatorReply(id=req.id, coordinator=broker_id, api=api)

    def _coordinating(self, group: str) -> Cluster | None:
        """In a cluster, the cluster once this broker coordinates ``group`` (else
        NOT_COORDINATOR or COORDINATOR_LOADING); None on a single broker."""
        if self.cluster is not None:
            self.cluster.group_offsets.check(group)
        return self.cluster

    def _no_positions_in_cluster(self, op: str) -> None:
        if self.cluster is not None:  # raised for poll and seek
            raise BadRequest(
                f"{op} is not served in a cluster: positions are the member's own there. "
                "Join, heartbeat and commit with the group's coordinator (find_coordinator) "
                "and read your assignment with fetch from each partition's leader "
                "(docs/cluster.md)")

    # -- topics -----------------------------------------------------------------------
    def handle_create_topic(self, req: p.CreateTopic, client: Client) -> p.Reply | None:
        if self.cluster is not None:
            cluster = self.cluster
            known = cluster.topic_records.get(req.topic)
            if req.exist_ok and known is not None and req.topic not in cluster.deleting:
                # a producer's look-up of a topic this broker knows: answered from its
                # view, without a ZooKeeper transaction and read on the loop (1.4 ms, 7.9
                # ms at p99 on three loopback brokers)
                return p.CreateTopicReply(id=req.id, topic=req.topic, created=False,
                                          partitions=len(known.replicas))
            try:
                count = cluster.create_topic(req.topic, req.partitions, req.config)
            except TopicExists:
                if not req.exist_ok:
                    raise
                # its real count, as a single broker answers (a client picks a partition
                # by it: the Python producer once drew from range(0) and failed)
                record = cluster.store.topic(req.topic)
                return p.CreateTopicReply(id=req.id, topic=req.topic, created=False,
                                          partitions=len(record.replicas) if record else 0)
            reply = p.CreateTopicReply(id=req.id, topic=req.topic, partitions=count)
            if cluster.led_here(req.topic):
                return reply

            # Answered once this broker's metadata names every partition's leader (as
            # Kafka's controller answers CreateTopics), so what the client sends next here
            # finds the topic; after CREATE_WAIT_MS it is answered anyway: it exists.
            def answer(final: bool) -> bool:
                if final or cluster.led_here(req.topic):
                    self.send(client, reply)
                    return True
                return False
            self.waiting.park(Waiter(client, time.monotonic() + CREATE_WAIT_MS / 1000, answer,
                                     [topic_key(req.topic)]))
            return None
        existing = self.topics.topics.get(req.topic)
        if existing is not None and req.exist_ok:
            return p.CreateTopicReply(id=req.id, topic=req.topic,
                                      partitions=len(existing.partitions), created=False)
        topic = self.topics.create(req.topic, req.partitions, req.config)
        self.coordinator.topics_changed({topic.name})
        return p.CreateTopicReply(id=req.id, topic=topic.name, partitions=len(topic.partitions))

    def handle_delete_topic(self, req: p.DeleteTopic) -> p.Reply:
        if self.cluster is not None:  # marked; the brokers delete their copies after
            from brokerd.cluster.admin import delete_topic
            delete_topic(self.cluster, req.topic)
            return p.DeleteTopicReply(id=req.id, topic=req.topic)
        self.topics.delete(req.topic)
        self.offsets.forget(topic=req.topic)
        self.coordinator.topics_changed({req.topic})
        return p.DeleteTopicReply(id=req.id, topic=req.topic)

    def handle_create_partitions(self, req: p.CreatePartitions) -> p.Reply:
        if self.cluster is not None:
            from brokerd.cluster.admin import create_partitions
            count = create_partitions(self.cluster, req.topic, req.partitions)
            return p.CreatePartitionsReply(id=req.id, topic=req.topic, partitions=count)
        topic = self.topics.grow(req.topic, req.partitions)
        self.coordinator.topics_changed({topic.name})
        return p.CreatePartitionsReply(id=req.id, topic=topic.name,
                                       partitions=len(topic.partitions))

    def handle_delete_records(self, req: p.DeleteRecords, client: Client) -> p.Reply | None:
        if self.cluster is not None:  # on the leader; answered once the ISR followed
            from brokerd.cluster.admin import delete_records
            return delete_records(self.cluster, req, client)
        plog = self.topics.get(req.topic).partition(req.partition)
        start = plog.delete_records(plog.end_offset if req.offset == -1 else req.offset)
        return p.DeleteRecordsReply(id=req.id, topic=req.topic, partition=req.partition,
                                    start_offset=start)

    def handle_delete_group(self, req: p.DeleteGroup, client: Client) -> p.Reply | None:
        if self._coordinating(req.group) is not None:  # answered once the tombstones are
            need = self.coordinator.delete(req.group)
            reply = p.DeleteGroupReply(id=req.id, group=req.group)
            if need is None:
                return reply
            self.acks.add(DurableAck(client, reply, [need]))
            return None
        try:
            self.coordinator.delete(req.group)
        except OSError as exc:
            raise StorageError(f"cannot forget the offsets of {req.group!r}: {exc}") from exc
        return p.DeleteGroupReply(id=req.id, group=req.group)

    def handle_metadata(self, req: p.Metadata) -> p.Reply:
        names = req.topics if req.topics is not None else sorted(self.topics.topics)
        cluster = self.cluster
        if cluster is None:
            return p.MetadataReply(id=req.id, topics=[topic_info(self.topics.get(n))
                                                      for n in names])
        infos = [self._cluster_topic_info(cluster, n) for n in names]
        for info in infos:
            for part in info.partitions:
                cluster.partition_info(info.name, part)
        return p.MetadataReply(id=req.id, topics=infos, brokers=cluster.broker_infos(),
                               controller=cluster.controller_id)

    def _cluster_topic_info(self, cluster: Cluster, name: str) -> p.TopicInfo:
        """A topic of the cluster, also one this broker holds no replica of (as in Kafka,
        any broker answers for every topic, so a client may bootstrap from it); the offsets
        of a partition only other brokers hold are -1 here: its leader has them."""
        record = cluster.topic_records.get(name)
        if name in self.topics.topics or record is None or name in cluster.deleting:
            return topic_info(self.topics.get(name))
        return p.TopicInfo(name=name, config=msgspec.to_builtins(
            topic_config(self.config.topic_defaults, record.config)), partitions=[
            p.PartitionInfo(partition=i, start_offset=-1, end_offset=-1, size_bytes=0)
            for i in range(len(record.replicas))])

    def _clustered(self) -> Cluster:
        if self.cluster is None:
            raise BadRequest("this broker is not in a cluster (started without --zookeeper)")
        return self.cluster

    def handle_list_offsets(self, req: p.ListOffsets) -> p.Reply:
        plog = self.topics.get(req.topic).partition(req.partition)
        if req.timestamp == p.LATEST:
            offset = plog.visible_end
        elif req.timestamp == p.EARLIEST:
            offset = plog.start_offset
        else:
            found = plog.offset_for_time(req.timestamp)
            offset = plog.end_offset if found is None else found
        return p.ListOffsetsReply(id=req.id, offset=offset)


# -- helpers of the hot path ----------------------------------------------------------
def _decode_batch(raw: msgspec.Raw, max_bytes: int) -> list[Record]:
    if len(raw) > max_bytes:
        raise MessageTooLarge(f"batch of {len(raw)} bytes is over the topic's "
                              f"max_batch_bytes ({max_bytes})")
    try:
        records = decode_records(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise BadRequest(f"records must be an array of [value, key, headers, timestamp]: {exc}")
    if not records:
        raise BadRequest("records is empty: send at least one record")
    for r in records:
        if r.headers:
            for name, value in r.headers.items():
                if bytes(value)[:1] and bytes(value)[0] not in _STR_OR_BIN:
                    raise BadRequest(f"header {name[:40]!r} must be a string or bytes")
    return records


def _timestamps(records: list[Record], now: int) -> tuple[int, int]:
    """The first and the largest timestamp (``now`` for records without one)."""
    if len(records) == 1:  # the common case of a producer that does not linger
        stamp = records[0].timestamp
        return (now, now) if stamp is None else (stamp, stamp)
    stamps = [r.timestamp for r in records]
    if None in stamps:
        stamps = [now if t is None else t for t in stamps]
    return stamps[0], max(stamps)  # type: ignore[type-var,return-value]


def _split(topic: Topic, raw: msgspec.Raw,
           records: list[Record]) -> dict[int, tuple[bytes | msgspec.Raw, list[Record]]]:
    """Partition by key hash, keeping each record's bytes as the producer encoded them.

    Keyless records of one request stay together (sticky).  Every part is checked against
    the topic's batch limit before anything is appended.
    """
    count = len(topic.partitions)
    sticky = topic.next_spread % count
    topic.next_spread += 1
    encoded = _RAW_LIST.decode(raw)
    parts: dict[int, tuple[list[msgspec.Raw], list[Record]]] = {}
    for r, r_bytes in zip(records, encoded):
        if bytes(r.key) == b"\xc0":
            index = sticky
        else:
            index = p.partition_for_key(key_content(r.key), count)
        part = parts.setdefault(index, ([], []))
        part[0].append(r_bytes)
        part[1].append(r)
    if len(parts) == 1:
        index, (_, recs) = parts.popitem()
        return {index: (raw, recs)}
    return {i: (_array_header(len(rs)) + b"".join(bytes(b) for b in bs), rs)
            for i, (bs, rs) in parts.items()}


_RAW_LIST = msgspec.msgpack.Decoder(list[msgspec.Raw])


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _wire(batches: list[Any], as_bin: bool) -> tuple[list[p.WireBatch], int, int]:
    """Stored batches as the wire carries them, their payload bytes and their records."""
    wire: list[p.WireBatch] = []
    size = records = 0
    for b in batches:
        header = b.header
        payload = msgspec.Raw(_encode_bin(b.payload) if as_bin else b.payload)
        wire.append((header.base_offset, header.append_timestamp, payload))
        size += len(payload)
        records += header.record_count
    return wire, size, records


_encode_bin = msgspec.msgpack.Encoder().encode


def _reply_bytes(wire: list[p.WireBatch]) -> int:
    return sum(len(b[2]) for b in wire)


class _Stream:
    """What a poll may still send: replies and bytes (a plain poll: one reply)."""

    __slots__ = ("replies", "budget")

    def __init__(self, replies: int, budget: int) -> None:
        self.replies = replies
        self.budget = budget

    def take(self, reply: p.PollReply, used: int) -> bool:
        """Count ``reply`` (``used`` payload bytes) against the stream; True (and
        ``reply.more``) if more may follow."""
        self.replies -= 1
        self.budget -= used
        reply.more = self.replies > 0 and self.budget > 0
        return reply.more


def _mono_ms() -> int:
    return int(time.monotonic() * 1000)
