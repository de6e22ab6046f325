"""The replica fetcher's bookkeeping, against a leader that never answers (nothing listens
at its endpoint): each partition has one request out, however often it is asked again."""

from __future__ import annotations

import time

import zmq

from brokerd.cluster.fetcher import (
    POLL_WAIT_MS,
    REPLY_TIMEOUT_S,
    Follow,
    ReplicaFetcher,
)
from tests.helpers import free_port


def test_requests_to_a_dead_leader_do_not_pile_up() -> None:
    results: list[tuple] = []
    fetcher = ReplicaFetcher(1, results.append, zmq.Context.instance())
    watched: list[int] = []
    fetcher.watch_with(watched.append)
    dead = f"tcp://127.0.0.1:{free_port()}"
    try:
        for partition in range(3):
            fetcher.follow(Follow(("t", partition), 0, dead, 1, 0, "id"))
        assert len(watched) == 1  # one socket per leader, its descriptor handed to the loop
        assert len(fetcher._pending) == 3 and fetcher.next_due < float("inf")
        now = time.monotonic()
        for round_ in range(1, 6):  # each round past the reply timeout asks again
            now += REPLY_TIMEOUT_S + POLL_WAIT_MS / 1000 + 0.1
            fetcher.tick(now)
            assert len(fetcher._pending) == 3, round_
        fetcher.follow(Follow(("t", 0), 2, dead, 2, 1, "id"))  # a new leader epoch
        fetcher.unfollow(("t", 1))
        assert len(fetcher._pending) == 2
        assert not fetcher.readable() and not results
    finally:
        fetcher.stop()
