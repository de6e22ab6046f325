"""Partitions handed over on a rebalance (a member that joined with
``rebalance_timeout_ms``): a partition moving away is delivered to nobody until its holder
releases it (after committing what it finished), leaves, or the timeout passes; the new
owner starts exactly where the holder committed, so nothing is handled twice."""

from __future__ import annotations

import time

from brokerd import protocol as p
from runtime.client import Consumer, Event, Producer
from tests.helpers import BrokerProcess, wait_for

TOPIC, PARTITIONS = "orders", 4


def fill(broker: BrokerProcess, count: int, start: int = 0) -> None:
    with Producer(broker.api) as producer:
        producer._call(p.CreateTopic(topic=TOPIC, partitions=PARTITIONS, exist_ok=True))
        for i in range(start, start + count):
            producer.send(TOPIC, i, partition=i % PARTITIONS)


def drain(consumer: Consumer, until: float = 1.0) -> list[Event]:
    got, deadline = [], time.monotonic() + until
    while time.monotonic() < deadline:
        got.extend(consumer.poll(0.1))
    return got


def test_the_new_owner_waits_for_the_release_and_starts_at_the_holders_commit(
        broker: BrokerProcess) -> None:
    fill(broker, 400)
    revoked: list[list[tuple[str, int]]] = []
    a = Consumer(broker.api, group="g", topics=[TOPIC], rebalance_timeout_ms=20_000,
                 on_revoke=revoked.append)
    b = None
    try:
        first = drain(a)
        assert len(first) == 400
        a.commit({(TOPIC, q): 50 for q in range(PARTITIONS)})  # "finished" 50 of each
        b = Consumer(broker.api, group="g", topics=[TOPIC], rebalance_timeout_ms=20_000)
        assert b.assignment == []  # its partitions are still a's
        assert drain(b, 0.5) == []
        wait_for(lambda: a.poll(0.05) is not None and revoked, 10, what="a told of the move")
        moving = revoked[0]
        assert len(moving) == 2 and not set(moving) & set(a.assignment)
        assert drain(b, 0.5) == []  # a has not released them: nobody reads them
        a.commit({tp: 70 for tp in moving})  # the holder may still commit them
        a.release(moving)
        got = drain(b, 1.5)
        assert sorted(b.assignment) == sorted(moving)
        # b starts exactly at a's last commit: offsets 70..99 of each moved partition
        assert sorted((e.partition, e.offset) for e in got) == sorted(
            (q, o) for _, q in moving for o in range(70, 100))
    finally:
        a.close()
        if b is not None:
            b.close()


def test_by_default_the_holder_commits_what_it_polled_and_releases_at_once(
        broker: BrokerProcess) -> None:
    fill(broker, 400)
    a = Consumer(broker.api, group="g", topics=[TOPIC], rebalance_timeout_ms=20_000)
    b = None
    try:
        seen_a = [(e.partition, e.offset) for e in drain(a)]
        b = Consumer(broker.api, group="g", topics=[TOPIC], rebalance_timeout_ms=20_000)
        fill(broker, 400, start=400)
        seen_b: list[tuple[int, int]] = []
        deadline = time.monotonic() + 10
        while len(seen_a) + len(seen_b) < 800 and time.monotonic() < deadline:
            seen_a += [(e.partition, e.offset) for e in a.poll(0.05)]
            seen_b += [(e.partition, e.offset) for e in b.poll(0.05)]
        assert len(set(seen_a + seen_b)) == len(seen_a + seen_b), "an event came twice"
        assert len(seen_a) + len(seen_b) == 800, "an event was missed"
        assert b.assignment and a.assignment
    finally:
        a.close()
        if b is not None:
            b.close()


def test_a_holder_that_never_releases_loses_its_partitions_at_the_timeout(
        broker: BrokerProcess) -> None:
    fill(broker, 400)
    a = Consumer(broker.api, group="g", topics=[TOPIC], rebalance_timeout_ms=1500,
                 on_revoke=lambda tps: None)  # a stuck holder: never releases
    b = None
    try:
        assert len(drain(a)) == 400
        a.commit({(TOPIC, q): 10 for q in range(PARTITIONS)})
        joined = time.monotonic()
        b = Consumer(broker.api, group="g", topics=[TOPIC], rebalance_timeout_ms=1500)
        got = []
        while len(got) < 180 and time.monotonic() - joined < 10:
            got.extend(b.poll(0.1))
            a.poll(0)  # a stays alive (and learns of the move) but releases nothing
        waited = time.monotonic() - joined
        assert 1.4 <= waited < 5, waited
        assert len(got) == 180  # 2 partitions x offsets 10..99: from a's last commit
        assert min(e.offset for e in got) == 10
    finally:
        a.close()
        if b is not None:
            b.close()
