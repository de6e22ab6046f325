"""The broker process: one event loop over the API, the ingest socket and the flusher.

The loop blocks in ``epoll`` on the sockets' ZeroMQ file descriptors, the flusher's pipe
and the signal wake-up pipe until one is readable or the next timer (a long-poll
deadline, a session expiry, an interval fsync) is due, so an idle broker uses no CPU.
Signals only write to the wake-up pipe; the loop sees the flag and shuts down: stop
reading, answer what is parked, fsync everything, close the files.

A ZeroMQ socket's file descriptor only says that something may have changed, and a send
can take in the wake-up meant for an incoming request; so the loop asks the API socket
itself whether a request waits before it sleeps.  (``zmq.Poller`` does that for every
socket twice per call, a system call each: about eight per loop turn, now about four.)
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import msgspec
import zmq

from brokerd.config import BrokerConfig
from brokerd.errors import CorruptLogError, RailError, StorageError
from brokerd.flusher import Flusher, Round
from brokerd.groups import Coordinator, Group
from brokerd.handlers import Handlers
from brokerd.ingest import Ingest
from brokerd.log.compaction import clean
from brokerd.log.offsets import OffsetStore
from brokerd.log.partition import PartitionLog
from brokerd.memory import Trimmer
from brokerd.protocol import EXIT_STORAGE, ErrorReply, Reply
from brokerd.stats import Stats
from brokerd.topics import Topic, TopicRegistry
from brokerd.waiters import AckQueue, Client, WaitingRoom

if TYPE_CHECKING:
    from brokerd.cluster.node import Cluster
    from brokerd.security import Security

log = logging.getLogger("brokerd")
# Duplicated descriptors one fsync round may hold: with 10,000 dirty partitions a round
# would double the broker's open files; the rest waits for the next round.
FLUSH_FDS_PER_ROUND = 256
DRAIN = 256  # messages taken from one socket per loop turn before looking at the others
# Parked polls are answered once the sockets are drained (a burst of produces is one reply)
# and, within a long burst, after every DELIVER_EVERY requests.
DELIVER_EVERY = 16
# Plain ints: pyzmq's flag enums cost a microsecond per | on the hot path.
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE_NOBLOCK = int(zmq.SNDMORE) | NOBLOCK


class Broker(Handlers):
    def __init__(self, config: BrokerConfig, security: Security | None = None) -> None:
        self.config = config
        self.security = security
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.topics = TopicRegistry(data, config.topic_defaults, config.auto_create_topics)
        self.topics.load()
        self.offsets = OffsetStore(data)
        self.coordinator = Coordinator(self.offsets, self, self._rebalanced)
        if security is not None:
            security.follow_groups(self.coordinator)
        self.waiting = WaitingRoom()
        self.acks = AckQueue()
        self.stats = Stats()
        self.encoder = msgspec.msgpack.Encoder()
        self.context = zmq.Context()
        if security is not None:  # the ZAP handler must answer before a CURVE socket binds
            for counter in ("curve_refused", "ingest_denied"):
                self.stats.count(counter, 0)
            security.start(self.context, lambda: self.stats.count("curve_refused"))
        self.flusher = Flusher()
        self.ingest = Ingest(self)
        self.api = self._socket(zmq.ROUTER, config.bind)
        self.pull = self._socket(zmq.PULL, config.ingest)
        self._api_poller = zmq.Poller()
        self._api_poller.register(self.api, zmq.POLLIN)
        self.endpoints = (self.api.getsockopt_string(zmq.LAST_ENDPOINT),
                          self.pull.getsockopt_string(zmq.LAST_ENDPOINT))
        self._stopping = False
        self._reload = False
        self._wake_r: socket.socket | None = None  # signals wake the loop (catch_signals)
        self._wake_w: socket.socket | None = None
        self._next_flush: dict[str, float] = {}
        # When the next interval fsync of a topic is due (None: no topic waits for one).
        # Appends only bring it forward (``appended``); a full scan redoes it whenever a
        # round starts or ends and after housekeeping.
        self._topics_flush_at: float | None = None
        self._expiry_at: float | None = None
        self._next_offsets_flush = 0.0
        self._covered: dict[PartitionLog, int] = {}
        self._next_retention = time.monotonic() + config.retention_check_ms / 1000
        self.memory = Trimmer(time.monotonic())
        self.cluster: Cluster | None = None
        if config.zookeeper:
            from brokerd.cluster.node import Cluster
            self.cluster = Cluster(self, config)

    def _socket(self, kind: int, endpoint: str) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_frame_bytes)
        sock.setsockopt(zmq.LINGER, 1000)
        if self.security is not None:
            self.security.serve_securely(sock)
        sock.bind(endpoint)
        return sock

    # -- LogView for the coordinator --------------------------------------------------
    def partition_count(self, topic: str) -> int | None:
        t = self.topics.topics.get(topic)
        return len(t.partitions) if t else None

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        p = self.topics.get(topic).partition(partition)
        return p.start_offset, p.visible_end

    def appended(self, topic: Topic, partition: int) -> None:
        """``topic[partition]`` got a batch: wake its parked polls, and keep the flush
        deadline (the topic's next interval fsync may be the soonest now)."""
        self.waiting.data_arrived((topic.name, partition))
        if self.cluster is not None:
            self.cluster.appended(topic.name, partition)
        if topic.config.fsync != "never":
            due = self._next_flush.get(topic.name, 0.0)
            if self._topics_flush_at is None or due < self._topics_flush_at:
                self._topics_flush_at = due

    def sessions_changed(self) -> None:
        """Recompute when the next session may expire (after a join or an expiry).

        Heartbeats only push expiries later, so a stale, earlier time costs one early check.
        """
        expiry = self.coordinator.next_expiry()
        self._expiry_at = None if expiry is None else expiry / 1000

    def _rebalanced(self, group: Group) -> None:
        log.info("group %s generation %d: %d member(s)", group.name, group.generation,
                 len(group.members))
        self.waiting.group_changed(group.name)
        self.sessions_changed()  # a hand-over it began ends by a deadline

    # -- sending ----------------------------------------------------------------------
    def send(self, client: Client, reply: Reply) -> None:
        identity, req = client
        body = self.encoder.encode(reply)
        api = self.api
        try:  # frame by frame: send_multipart spends microseconds on flag enums
            api.send(identity, SNDMORE_NOBLOCK)
            if req:
                api.send(b"", SNDMORE_NOBLOCK)
            api.send(body, NOBLOCK, copy=len(body) < 65536)
        except zmq.Again:
            self.stats.count("replies_dropped")

    def send_error(self, client: Client, request_id: int, exc: RailError) -> None:
        self.stats.count(f"error.{exc.code}")
        if self.cluster is not None and isinstance(exc, CorruptLogError):
            # Whichever read found it (a request's, a parked fetch's or poll's, a
            # follower's): another replica's good copy may take over.
            self.cluster.damaged(exc)
        self.send(client, ErrorReply(id=request_id, code=exc.code, message=exc.message))

    # -- the loop ---------------------------------------------------------------------
    def catch_signals(self) -> None:
        """Take SIGTERM, SIGINT (and SIGHUP with security on) from now: before the ready
        line is printed, so that a signal sent as soon as it is read is handled (SIGHUP's
        default action ends the process: an ACL reload sent right after start killed the
        broker, silently, in tests/security/test_acl.py under load)."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        if self.security is not None:
            signal.signal(signal.SIGHUP, self._on_reload_signal)

    def serve(self) -> None:
        if self._wake_r is None:
            self.catch_signals()
        wake_r, wake_w = self._wake_r, self._wake_w
        assert wake_r is not None and wake_w is not None
        self.flusher.start()
        api_fd, pull_fd = int(self.api.getsockopt(zmq.FD)), int(self.pull.getsockopt(zmq.FD))
        flusher_fd, signal_fd = self.flusher.wake_fd, wake_r.fileno()
        poller = select.epoll()
        cluster_fd = self.cluster.wake_fd if self.cluster is not None else -1
        for fd in (api_fd, pull_fd, flusher_fd, signal_fd, cluster_fd):
            if fd >= 0:
                poller.register(fd, select.EPOLLIN)
        fetcher = self.cluster.fetcher if self.cluster is not None else None
        fetcher_fds: set[int] = set()
        if fetcher is not None:
            def watch(fd: int) -> None:
                fetcher_fds.add(fd)
                poller.register(fd, select.EPOLLIN)
            fetcher.watch_with(watch)
        self._topics_flush_at = self._scan_flush_deadline()
        flush_at = self._flush_deadline()
        api_ready, pull_more = self._api_readable(), True  # look before the first sleep
        fetched_more = fetcher is not None  # answers may have come while it joined
        try:
            while not self._stopping:
                timeout = (0 if api_ready or pull_more or fetched_more
                           else self._timeout_ms(flush_at))
                fired = [fd for fd, _ in poller.poll(timeout / 1000)]
                if flusher_fd in fired:
                    self._round_done(self.flusher.finished())
                if cluster_fd in fired and self.cluster is not None:
                    self.cluster.handle_events()
                if fetcher is not None and (fetched_more or not fetcher_fds.isdisjoint(fired)):
                    fetcher.receive()  # a follower's answers first: a high watermark waits
                if api_ready or api_fd in fired:
                    self._drain_api(api_ready)
                if pull_more or pull_fd in fired:
                    pull_more = self.ingest.drain(self.pull)
                self._deliver()
                if signal_fd in fired:
                    self._drain_wakeups(wake_r)
                    if self._reload and self.security is not None:
                        self._reload = False
                        self.security.reload()
                self._timers()
                flush_at = self._maybe_flush()
                api_ready = self._api_readable()  # this turn's sends may have taken its wake-up
                fetched_more = fetcher is not None and fetcher.readable()
        finally:
            poller.close()
            self._shutdown()
            signal.set_wakeup_fd(-1)
            wake_r.close()
            wake_w.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _on_reload_signal(self, signum: int, frame: object) -> None:
        self._reload = True

    @staticmethod
    def _drain_wakeups(sock: socket.socket) -> None:
        try:
            while sock.recv(512):
                pass
        except BlockingIOError:
            pass

    def _api_readable(self) -> bool:
        """A request waits on the API socket (a one-socket zmq poll is cheaper than the
        EVENTS option, which pyzmq passes through an enum lookup)."""
        return bool(self._api_poller.poll(0))

    def _drain_api(self, ready: bool) -> None:
        """Handle the requests on the API socket (``ready``: one is known to wait).

        Frame by frame: recv_multipart asks for RCVMORE through an enum lookup per frame.
        """
        api = self.api
        for n in range(1, DRAIN + 1):
            if not ready and not self._api_readable():
                return
            ready = False
            try:
                frame = api.recv(NOBLOCK, copy=False)
            except zmq.Again:  # not expected after a poll said readable; harmless
                return
            frames = [frame]
            while frame.more:  # the parts of a message arrive together
                frame = api.recv(NOBLOCK, copy=False)
                frames.append(frame)
            self.handle_frames(frames)
            if n % DELIVER_EVERY == 0:  # a long backlog must not hold back what it brought
                self._deliver()

    def _deliver(self) -> None:
        """Answer the polls that new data woke, then the produces that brought it."""
        self.waiting.deliver()
        acks = self.acks.after_delivery
        if acks:
            self.acks.after_delivery = []
            for client, reply in acks:
                self.send(client, reply)

    def _timeout_ms(self, flush_at: float | None) -> int:
        """How long the loop may sleep: until the soonest timer (1 ms late rather than early)."""
        soonest = min(self._next_retention, self.memory.next_check)
        if self.cluster is not None:
            soonest = min(soonest, self.cluster.next_timer, self.cluster.fetcher.next_due)
        for deadline in (flush_at, self.waiting.next_deadline(), self._expiry_at):
            if deadline is not None and deadline < soonest:
                soonest = deadline
        return max(0, int((soonest - time.monotonic()) * 1000) + 1)

    def _timers(self) -> None:
        now = time.monotonic()
        self.waiting.expire(now)
        if self._expiry_at is not None and now >= self._expiry_at:
            for group, member in self.coordinator.expire(int(now * 1000)):
                log.info("group %s: member %s session expired", group, member)
            self.sessions_changed()
        if now >= self.memory.next_check:
            self.memory.check(now)
        if self.cluster is not None:
            if now >= self.cluster.next_timer:
                self.cluster.timers(now)
            if now >= self.cluster.fetcher.next_due:
                self.cluster.fetcher.tick(now)
        if now >= self._next_retention:
            self._next_retention = now + self.config.retention_check_ms / 1000
            self.housekeeping()
            self._topics_flush_at = self._scan_flush_deadline()

    # -- durability -------------------------------------------------------------------
    def _flush_deadline(self) -> float | None:
        """When the next interval fsync is due (None when nothing waits for one)."""
        topics = self._topics_flush_at
        if not self.offsets.needs_flush:
            return topics
        return self._next_offsets_flush if topics is None else min(topics, self._next_offsets_flush)

    def _scan_flush_deadline(self) -> float | None:
        """The topics' part of ``_flush_deadline``, worked out from every partition."""
        return min((self._next_flush.get(t.name, 0.0) for t in self.topics.topics.values()
                    if t.config.fsync != "never" and any(p.needs_flush for p in t.partitions)),
                   default=None)

    def _maybe_flush(self) -> float | None:
        """Start an fsync round when producers wait for one or an interval is due.

        Returns when the loop must wake for the next one (None: a round is running, whose
        end wakes the loop, or nothing waits for one).
        """
        if self.flusher.in_flight is not None:
            return None
        now = time.monotonic()
        urgent = bool(self.acks.pending)
        deadline = self._flush_deadline()
        if not urgent and (deadline is None or now < deadline):
            return deadline
        waiting = self.acks.logs()
        jobs: list[Callable[[], None]] = []
        covered: dict[PartitionLog, int] = {}
        budget = [FLUSH_FDS_PER_ROUND]

        def take(plog: PartitionLog) -> None:
            try:
                ticket = plog.begin_flush()
            except OSError as exc:  # no descriptor to spare: it stays dirty for later
                self._flush_refused(plog, exc)
                return
            covered[plog] = ticket.end_offset
            jobs.append(ticket.run)
            budget[0] -= max(len(ticket.fds), 1)

        for plog in waiting:  # what producers wait for goes first
            if plog.needs_flush and budget[0] > 0:
                take(plog)
        for topic in self.topics.topics.values():
            due = topic.config.fsync != "never" and now >= self._next_flush.get(topic.name, 0.0)
            whole = True
            for plog in topic.partitions:
                if plog.needs_flush and due and plog not in covered:
                    if budget[0] <= 0:
                        whole = False  # the rest of the topic goes in the next round
                        break
                    take(plog)
            if due and whole:
                self._next_flush[topic.name] = now + topic.config.fsync_interval_ms / 1000
        if self.offsets.needs_flush and (urgent or now >= self._next_offsets_flush):
            self._next_offsets_flush = now + self.config.topic_defaults.fsync_interval_ms / 1000
            fd = self.offsets.begin_flush()
            jobs.append(lambda: _fsync_and_close(fd))
        if jobs:  # its end rescans the deadline (_round_done)
            self._covered = covered
            self.flusher.submit(jobs)
            return None
        self._topics_flush_at = self._scan_flush_deadline()
        if urgent:
            self._settle()
        return self._flush_deadline()

    def _flush_refused(self, plog: PartitionLog, exc: OSError) -> None:
        """No descriptor for the flusher's copy: what waits on ``plog`` fails now (rather
        than wait for ever); the appends stay, unsynced, for a later round."""
        self.stats.count("flush_deferred")
        log.warning("cannot hand %s to the flusher: %s", plog.directory, exc)
        for ack in self.acks.fail({plog}):
            self.send_error(ack.client, ack.reply.id, StorageError.of(
                "cannot fsync the batch now", exc))

    def _round_done(self, rnd: Round | None) -> None:
        if rnd is None:
            return
        for seconds in rnd.seconds:
            self.stats.fsync_seconds.observe(seconds)
        covered = list(self._covered.items())  # in the order of the round's first jobs
        failed = {covered[i][0] for i in rnd.failed if i < len(covered)}
        for plog, end in covered:
            if plog not in failed:
                plog.durable_offset = max(plog.durable_offset, end)
        if failed:
            self._discard_unsynced(failed)
            for ack in self.acks.fail(failed):
                self.send_error(ack.client, ack.reply.id, StorageError(
                    f"{rnd.error}; the batch was not stored: retry it"))
            if self.cluster is not None:  # followers may hold what was cut: lead no more
                self.cluster.storage_failed(f"an fsync failed: {rnd.error}", None)
        self._covered = {}
        self._topics_flush_at = self._scan_flush_deadline()
        settled = self._settle()
        if settled:
            self.stats.group_commit.observe(settled)

    def _discard_unsynced(self, failed: set[PartitionLog]) -> None:
        """Cut each partition whose fsync failed back to its durable offset; a partition
        that cannot be cut back leaves its state unknown, so the broker stops at once with
        the storage exit code and a restart recovers from what is on disk."""
        for plog in failed:
            try:
                self.stats.count("fsync_failures")
                self.stats.count("records_discarded", plog.discard_unsynced())
            except (OSError, RailError) as exc:
                log.critical("cannot cut %s back after a failed fsync: %s; stopping",
                             plog.directory, exc)
                logging.shutdown()
                os._exit(EXIT_STORAGE)

    def _settle(self) -> int:
        """Answer the produces now durable (and replicated); return how many."""
        acks = self.acks.settle()
        for ack in acks:
            self.send(ack.client, ack.reply)
        return len(acks)

    def housekeeping(self) -> None:
        """Retention and compaction: whole segments, at most once a check interval."""
        for topic in self.topics.topics.values():
            for p in topic.partitions:
                try:
                    p.enforce_retention()
                    if topic.config.cleanup_policy == "compact" and len(p.segments) > 1:
                        # a replica whose high watermark is not known yet cleans nothing
                        clean(p, limit=None if self.cluster is None else p.high_watermark or 0)
                except (OSError, RailError) as exc:
                    log.error("housekeeping of %s failed: %s", p.directory, exc)

    def _shutdown(self) -> None:
        log.info("shutting down: answering parked requests and flushing")
        self._deliver()
        self.waiting.answer_all()
        if self.flusher.in_flight is not None:
            self._round_done(self.flusher.finished(wait=True))
        for topic in self.topics.topics.values():
            for p in topic.partitions:
                p.flush()
        self.offsets.flush()
        self._settle()
        self.flusher.stop()
        if self.cluster is not None:
            self.cluster.stop()
        self.api.close()
        self.pull.close()
        self.topics.close()
        self.offsets.close()
        if self.security is not None:
            self.security.stop()
        self.context.term()
        log.info("stopped")


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
