"""The clients of the scale benchmark, each run in a process of its own (``common.spawn``).

- ``keyed_produce`` / ``group_consume``: Rail's own ``Producer`` and ``Consumer``, as a user
  runs them, over many partitions (and topics).
- ``hold_members``: many consumer groups of one member each, all in this one process on a
  few DEALER sockets, joining, draining a topic, then heartbeating at the interval the
  broker gave them, as long as the benchmark wants.
- ``hold_connections``: many DEALER connections, producing keyed events together, then
  open and idle.

The long-lived holders and the benchmark talk through files in a folder: the holder
writes ``<phase>.json`` when a phase is done; the benchmark touches ``go`` or ``stop``.
Every loop here is bounded by a deadline.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import zmq

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from brokerd import protocol as p  # noqa: E402

MEMBERS_PER_SOCKET = 250  # group members sharing one DEALER socket in hold_members
CONNECTION_BATCH = 100  # records per produce request in hold_connections
CONNECTION_WINDOW = 8  # produce requests in flight per connection
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


# --- phase files ---------------------------------------------------------------


def mark(folder: str, phase: str, result: dict[str, Any]) -> None:
    """Say that ``phase`` is done, with its figures (written whole, then renamed)."""
    tmp = Path(folder, f".{phase}.tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(Path(folder, f"{phase}.json"))


def _wait_flag(folder: str, name: str, deadline: float, service: Any = None) -> None:
    """Wait for the file ``name`` in ``folder``; call ``service(timeout_ms)`` meanwhile."""
    flag = Path(folder, name)
    while not flag.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {name} flag in {folder}")
        if service is None:
            time.sleep(0.05)
        else:
            service(50)


# --- Rail's own client -----------------------------------------------------------


def keyed_produce(api: str, topics: list[str], n: int, size: int) -> dict[str, Any]:
    """``Producer.send`` of n events with distinct keys, event i to topics[i % T]; flush.

    Seconds from the first send to the last ack; partition counts are looked up first."""
    from runtime.client import Producer

    value = b"v" * size
    with Producer(api) as producer:
        for topic in topics:
            producer.partitions_for(topic)
        count = len(topics)
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            producer.send(topics[i % count], value, key=b"k%d" % i)
        producer.flush()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        errors = [str(e) for e in producer.errors[:5]]
        return {"seconds": seconds, "cpu_s": cpu, "errors": len(producer.errors), "first_errors": errors}


def group_consume(api: str, topics: list[str], n: int, group: str) -> dict[str, Any]:
    """One ``Consumer`` of a new group polls all n events of ``topics`` and commits each
    batch (async; the last commit sync).  Seconds from the first poll to the last commit."""
    from runtime.client import Consumer

    with Consumer(api, group=group, topics=topics) as consumer:
        got = 0
        started, cpu = time.perf_counter(), time.process_time()
        while got < n:
            events = consumer.poll(timeout_s=10.0)
            if not events:
                raise RuntimeError(f"group {group} ran dry after {got} of {n} events")
            got += len(events)
            consumer.commit(sync=got >= n)
        return {"seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "events": got,
                "partitions": len(consumer.assignment)}


# --- many group members in one process ---------------------------------------------


class _Members:
    """One-member groups ``scale-g<i>`` on a few DEALER sockets; replies matched by id."""

    def __init__(self, api: str, groups: int) -> None:
        self.context = zmq.Context()
        self.context.set(zmq.MAX_SOCKETS, groups // MEMBERS_PER_SOCKET + 16)
        self.sockets = []
        self.poller = zmq.Poller()
        for _ in range(math.ceil(groups / MEMBERS_PER_SOCKET)):
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(api)
            self.poller.register(sock, zmq.POLLIN)
            self.sockets.append(sock)
        self.groups = [f"scale-g{i}" for i in range(groups)]
        self.member_ids = [""] * groups
        self.interval_s = p.DEFAULT_SESSION_TIMEOUT_MS / 3000
        self.beats: list[tuple[float, int]] = []  # heap of (when due, member)
        self.ids = itertools.count(1)
        self.pending: dict[int, tuple[str, int]] = {}  # request id -> (op, member)
        self.errors: Counter[str] = Counter()
        self.heartbeats = 0
        self.handlers: dict[str, Any] = {}

    def send(self, member: int, request: dict[str, Any]) -> None:
        request["id"] = rid = next(self.ids)
        self.pending[rid] = (request["op"], member)
        self.sockets[member // MEMBERS_PER_SOCKET].send(_encode(request))

    def service(self, timeout_ms: int) -> None:
        """Send the heartbeats that are due; handle the replies that come in ``timeout_ms``."""
        now = time.monotonic()
        while self.beats and self.beats[0][0] <= now:
            due, member = heapq.heappop(self.beats)
            later = due + self.interval_s  # after a stall, no burst of beats to catch up
            heapq.heappush(self.beats, (later if later > now else now + self.interval_s, member))
            self.heartbeats += 1
            self.send(member, {"op": "heartbeat", "group": self.groups[member],
                               "member_id": self.member_ids[member]})
        if self.beats:
            timeout_ms = max(0, min(timeout_ms, math.ceil((self.beats[0][0] - now) * 1000)))
        for sock, _ in self.poller.poll(timeout_ms):
            while True:
                try:
                    body = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                reply = _decode(body)
                op, member = self.pending.pop(reply.get("id", 0), ("?", -1))
                if reply.get("op") == "error":
                    self.errors[f"{op}:{reply.get('code')}"] += 1
                handler = self.handlers.get(op)
                if handler is not None:
                    handler(member, reply)

    def run_until(self, done: Any, deadline: float, what: str) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not done by the deadline ({len(self.pending)} replies owed)")
            self.service(20)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()


def _join_all(members: _Members, topic: str, deadline: float) -> float:
    joined = [False] * len(members.groups)

    def on_join(member: int, reply: dict[str, Any]) -> None:
        if reply.get("op") == "join":
            members.member_ids[member] = reply["member_id"]
            members.interval_s = reply["heartbeat_interval_ms"] / 1000
            joined[member] = True

    members.handlers["join"] = on_join
    started = time.monotonic()
    for member, group in enumerate(members.groups):
        members.send(member, {"op": "join", "group": group, "topics": [topic], "client_id": "scale"})
    members.run_until(lambda: all(joined), deadline, "join")
    seconds = time.monotonic() - started
    now = time.monotonic()  # heartbeats spread over one interval, as members started apart
    count = len(members.groups)
    members.beats = [(now + members.interval_s * (i + 1) / count, i) for i in range(count)]  # sorted: a heap
    return seconds


def _drain_all(members: _Members, per_group: int, deadline: float) -> tuple[float, float]:
    """Every member polls (max_wait_ms 0) and commits what each reply held, until it has
    ``per_group`` events; polls of all members are in flight together."""
    got = [0] * len(members.groups)
    commits_owed = [0]

    def poll(member: int) -> None:
        members.send(member, {"op": "poll", "group": members.groups[member],
                              "member_id": members.member_ids[member], "max_wait_ms": 0})

    def on_poll(member: int, reply: dict[str, Any]) -> None:
        offsets = []
        for data in reply.get("partitions", ()):
            low, end = data["offset"], data["offset"]
            for base, _ts, records in data["batches"]:
                got[member] += sum(1 for i in range(len(records)) if base + i >= low)
                end = max(end, base + len(records))
            offsets.append([data["topic"], data["partition"], end])
        if offsets:
            commits_owed[0] += 1
            members.send(member, {"op": "commit", "group": members.groups[member],
                                  "member_id": members.member_ids[member], "offsets": offsets})
        if got[member] < per_group:
            poll(member)

    def on_commit(member: int, reply: dict[str, Any]) -> None:
        commits_owed[0] -= 1

    members.handlers.update(poll=on_poll, commit=on_commit)
    started, cpu = time.monotonic(), time.process_time()
    for member in range(len(members.groups)):
        poll(member)
    members.run_until(lambda: min(got) >= per_group and not commits_owed[0], deadline, "drain")
    return time.monotonic() - started, time.process_time() - cpu


def hold_members(api: str, topic: str, groups: int, per_group: int, folder: str,
                 max_s: float) -> dict[str, Any]:
    """Join ``groups`` one-member groups to ``topic`` (phase ``joined``); on ``go``, each
    drains ``per_group`` events of it and commits (phase ``drained``); then heartbeat every
    member at the broker's interval until ``stop``.  Returns the counts of it all."""
    deadline = time.monotonic() + max_s
    members = _Members(api, groups)
    try:
        join_s = _join_all(members, topic, deadline)
        mark(folder, "joined", {"seconds": join_s, "interval_s": members.interval_s})
        _wait_flag(folder, "go", deadline, members.service)
        drain_s, cpu_s = _drain_all(members, per_group, deadline)
        mark(folder, "drained", {"seconds": drain_s, "cpu_s": cpu_s, "events": groups * per_group})
        beats_before = members.heartbeats
        _wait_flag(folder, "stop", deadline, members.service)
        return {"join_s": join_s, "drain_s": drain_s, "heartbeats_idle": members.heartbeats - beats_before,
                "errors": dict(members.errors)}
    finally:
        members.close()


# --- many connections in one process -------------------------------------------------


def _connect_all(context: zmq.Context, api: str, count: int, deadline: float) -> list[zmq.Socket]:
    """``count`` DEALER connections, each answered one ping."""
    sockets = []
    poller = zmq.Poller()
    for _ in range(count):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(api)
        sock.send(_encode({"op": "ping", "id": 1}))
        poller.register(sock, zmq.POLLIN)
        sockets.append(sock)
    waiting = set(range(count))
    index = {sock: i for i, sock in enumerate(sockets)}
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} of {count} connections got no ping reply")
        for sock, _ in poller.poll(50):
            sock.recv()
            waiting.discard(index[sock])
    return sockets


def _produce_over(sockets: list[zmq.Socket], topic: str, n: int, size: int,
                  deadline: float) -> dict[str, Any]:
    """n keyed events (partition chosen by the broker from each key), shared out over the
    connections in produce requests of CONNECTION_BATCH records, CONNECTION_WINDOW in
    flight per connection, acks=1."""
    value = b"v" * size
    count = len(sockets)
    shares = [range(c, n, count) for c in range(count)]  # event i goes over connection i % count
    cursor = [0] * count
    in_flight = [0] * count
    errors: Counter[str] = Counter()
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    index = {sock: i for i, sock in enumerate(sockets)}

    def refill(c: int) -> None:
        share = shares[c]
        while in_flight[c] < CONNECTION_WINDOW and cursor[c] < len(share):
            chunk = share[cursor[c]:cursor[c] + CONNECTION_BATCH]
            cursor[c] += len(chunk)
            records = [[value, b"k%d" % i] for i in chunk]
            sockets[c].send(_encode({"op": "produce", "id": cursor[c], "topic": topic, "records": records}))
            in_flight[c] += 1

    started, cpu = time.monotonic(), time.process_time()
    for c in range(count):
        refill(c)
    while any(in_flight):
        if time.monotonic() > deadline:
            raise TimeoutError(f"produce over {count} connections: {sum(in_flight)} replies owed")
        for sock, _ in poller.poll(50):
            c = index[sock]
            while True:
                try:
                    reply = _decode(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                in_flight[c] -= 1
                if reply.get("op") == "error":
                    errors[str(reply.get("code"))] += 1
            refill(c)
    return {"seconds": time.monotonic() - started, "cpu_s": time.process_time() - cpu, "errors": dict(errors)}


def hold_connections(api: str, topic: str, count: int, n: int, size: int, folder: str,
                     max_s: float) -> dict[str, Any]:
    """Open ``count`` connections (phase ``connected``); on ``go`` produce n keyed events
    over them (phase ``produced``); then keep them open, idle, until ``stop``."""
    deadline = time.monotonic() + max_s
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, count + 16)
    sockets: list[zmq.Socket] = []
    try:
        started = time.monotonic()
        sockets = _connect_all(context, api, count, deadline)
        connect_s = time.monotonic() - started
        mark(folder, "connected", {"seconds": connect_s})
        _wait_flag(folder, "go", deadline)
        produced = _produce_over(sockets, topic, n, size, deadline)
        mark(folder, "produced", produced)
        _wait_flag(folder, "stop", deadline)
        return {"connect_s": connect_s, **produced}
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()
