"""One replay of a DLQ at a time: membership of its cursor group is the lease.

A replay joins the group ``rail.dlq-replay.<dlq>`` and goes ahead only when it finds itself
the group's one member; otherwise it leaves, waits a random moment and tries again, up to a
bound.  The broker serialises joins, so of two replays at most one can find itself alone.
A replay killed with kill -9 holds the lease until its session expires (``SESSION_MS``).
"""

from __future__ import annotations

import random
import threading
import time

from brokerd import protocol as p
from runtime.connection import BrokerError
from runtime.dlq.letters import cursor_group
from runtime.routing import Link, connect

SESSION_MS = 3000
HEARTBEAT_S = 0.5
WAIT_S = 2 * SESSION_MS / 1000 + 2  # long enough for a killed replay's lease to expire


class Lease:
    """The right to replay one DLQ.  Thread-safe: a daemon thread heartbeats on its own
    connection while the caller's thread uses its own."""

    def __init__(self, broker: str, dlq: str) -> None:
        self.broker, self.dlq, self.group = broker, dlq, cursor_group(dlq)
        self.member_id = ""
        self.generation = -1
        self.waited = False
        self.lost = False
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None

    def acquire(self, conn: Link, wait_s: float = WAIT_S) -> None:
        """Become the group's only member, or raise ``BrokerError("REPLAY_RUNNING")``."""
        deadline = time.monotonic() + wait_s
        while True:
            joined = conn.call(p.Join(group=self.group, topics=[self.dlq],
                                      session_timeout_ms=SESSION_MS, client_id="rail dlq replay"))
            self.member_id, self.generation = joined.member_id, joined.generation
            members = conn.call(p.DescribeGroup(group=self.group)).members
            if [m.member_id for m in members] == [self.member_id]:
                break
            conn.call(p.Leave(group=self.group, member_id=self.member_id))
            self.waited = True
            if time.monotonic() > deadline:
                raise BrokerError("REPLAY_RUNNING", f"another replay of {self.dlq} is running: "
                                  "try again when it is done")
            time.sleep(random.uniform(0.1, 0.5))
        self._beats = threading.Thread(target=self._beat, daemon=True, name="rail-dlq-lease")
        self._beats.start()

    def _beat(self) -> None:
        conn = connect(self.broker, timeout_s=HEARTBEAT_S * 4)
        try:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    beat = conn.call(p.Heartbeat(group=self.group, member_id=self.member_id))
                    self.generation = beat.generation
                except BrokerError as exc:
                    if exc.code == "NOT_MEMBER":
                        self.lost = True
                        return
                    continue  # a late beat is not fatal; the session allows a few
        finally:
            conn.close()

    def check(self) -> None:
        """Raise ``BrokerError("REPLAY_RUNNING")`` if the lease was lost (the session expired:
        this process was frozen past it), since another replay may be running now."""
        if self.lost:
            raise BrokerError("REPLAY_RUNNING", f"this replay of {self.dlq} lost its lease "
                              f"(silent past {SESSION_MS} ms): run it again")

    def commit(self, conn: Link, offsets: list[tuple[str, int, int]]) -> None:
        """Commit ``offsets`` to the group as its member."""
        conn.call(p.Commit(group=self.group, offsets=offsets, member_id=self.member_id,
                           generation=self.generation))

    def release(self, conn: Link) -> None:
        self._stop.set()
        if self._beats is not None:
            self._beats.join(timeout=HEARTBEAT_S * 8)
        if self.member_id:
            try:
                conn.call(p.Leave(group=self.group, member_id=self.member_id))
            except BrokerError:
                pass  # the session expires instead; never hide the error that got us here
