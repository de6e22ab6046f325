"""The coordinator's pure logic: assignment, rebalance, positions, fencing."""

from __future__ import annotations

import pytest

from brokerd.errors import NotMember, StaleGeneration
from brokerd.groups import Coordinator


class Offsets:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str, int], int] = {}

    def get(self, group: str, topic: str, partition: int) -> int | None:
        return self.data.get((group, topic, partition))

    def commit(self, group: str, items: list[tuple[str, int, int]]) -> None:
        for t, p, o in items:
            self.data[(group, t, p)] = o

    def groups(self) -> set[str]:
        return {g for g, _, _ in self.data}


class Logs:
    def __init__(self, partitions: dict[str, int], end: int = 100) -> None:
        self.partitions = partitions
        self.end = end

    def partition_count(self, topic: str) -> int | None:
        return self.partitions.get(topic)

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        return 0, self.end


def coordinator(partitions: int = 6) -> Coordinator:
    return Coordinator(Offsets(), Logs({"orders": partitions}))


def test_three_members_get_disjoint_complete_assignments() -> None:
    c = coordinator(6)
    for m in ("a", "b", "c"):
        group, _ = c.join("g", m, ["orders"], 1000, "earliest", "", now_ms=0)
    owned = [set(group.assignment_of(m)) for m in ("a", "b", "c")]
    assert all(len(o) == 2 for o in owned)
    assert set().union(*owned) == {("orders", i) for i in range(6)}


def test_an_expired_member_hands_its_partitions_to_the_others() -> None:
    c = coordinator(4)
    c.join("g", "a", ["orders"], 1000, "earliest", "", now_ms=0)
    group, _ = c.join("g", "b", ["orders"], 5000, "earliest", "", now_ms=0)
    generation = group.generation
    assert c.expire(now_ms=1500) == [("g", "a")]
    assert group.generation == generation + 1
    assert len(group.assignment_of("b")) == 4


def test_a_partition_that_moves_restarts_from_the_committed_offset() -> None:
    c = coordinator(2)
    group, _ = c.join("g", "a", ["orders"], 1000, "earliest", "", now_ms=0)
    c.commit("g", "a", group.generation, [("orders", 1, 10)], now_ms=0)
    group.positions[("orders", 1)] = 50  # delivered up to 50, committed 10
    c.join("g", "b", ["orders"], 1000, "earliest", "", now_ms=0)
    moved = [tp for tp in group.assignment_of("b")]
    assert moved == [("orders", 1)]
    assert c.position(group, ("orders", 1)) == 10


def test_a_rejoin_under_the_same_member_id_redelivers_uncommitted_work() -> None:
    c = coordinator(1)
    group, _ = c.join("g", "w-0", ["orders"], 1000, "earliest", "", now_ms=0)
    c.commit("g", "w-0", group.generation, [("orders", 0, 7)], now_ms=0)
    group.positions[("orders", 0)] = 40
    c.join("g", "w-0", ["orders"], 1000, "earliest", "", now_ms=10)
    assert c.position(group, ("orders", 0)) == 7


def test_a_commit_for_a_partition_owned_by_another_member_is_refused() -> None:
    c = coordinator(2)
    group, _ = c.join("g", "a", ["orders"], 1000, "earliest", "", now_ms=0)
    old_generation = group.generation
    c.join("g", "b", ["orders"], 1000, "earliest", "", now_ms=0)
    taken = group.assignment_of("b")[0]
    with pytest.raises(StaleGeneration):
        c.commit("g", "a", old_generation, [(taken[0], taken[1], 5)], now_ms=0)


def test_an_unknown_member_must_join_again() -> None:
    c = coordinator(1)
    c.join("g", "a", ["orders"], 1000, "earliest", "", now_ms=0)
    with pytest.raises(NotMember):
        c.member("g", "ghost", now_ms=0)


def test_a_new_group_starting_at_latest_skips_old_events() -> None:
    c = coordinator(1)
    group, _ = c.join("g", "a", ["orders"], 1000, "latest", "", now_ms=0)
    assert c.position(group, ("orders", 0)) == 100


def cooperative_pair(timeout_ms: int = 5000) -> tuple[Coordinator, object]:
    """Member a (hands over, ``timeout_ms``) owned all 4 partitions; b joins at t=1000."""
    c = coordinator(4)
    group, _ = c.join("g", "a", ["orders"], 30_000, "earliest", "", now_ms=0,
                      rebalance_timeout_ms=timeout_ms)
    c.commit("g", "a", group.generation, [("orders", 1, 5)], now_ms=0)
    group.positions[("orders", 1)] = 40  # delivered up to 40, committed 5
    c.join("g", "b", ["orders"], 30_000, "earliest", "", now_ms=1000)
    return c, group


def test_a_moved_partition_waits_for_its_holder_to_release_it() -> None:
    c, group = cooperative_pair()
    # a learns it lost 1 and 3; nobody owns them while a finishes them
    assert group.assignment_of("a") == [("orders", 0), ("orders", 2)]
    assert group.assignment_of("b") == []
    assert set(group.revoking) == {("orders", 1), ("orders", 3)}
    # a may still commit what it finished of them; b may not
    c.commit("g", "a", group.generation, [("orders", 1, 40)], now_ms=1500)
    with pytest.raises(StaleGeneration):
        c.commit("g", "b", group.generation, [("orders", 1, 41)], now_ms=1500)
    generation = group.generation
    assert c.release("g", "a", [("orders", 1), ("orders", 3), ("orders", 0)], now_ms=2000) \
        == [("orders", 1), ("orders", 3)]
    assert group.generation == generation + 1
    assert group.assignment_of("b") == [("orders", 1), ("orders", 3)]
    assert c.position(group, ("orders", 1)) == 40  # from a's last commit: nothing twice


def test_a_hand_over_ends_at_its_timeout_or_when_the_holder_goes() -> None:
    c, group = cooperative_pair(timeout_ms=5000)
    assert c.next_expiry() == 6000  # the hand-over's end comes before any session's
    assert c.expire(now_ms=5999) == [] and group.assignment_of("b") == []
    c.expire(now_ms=6000)
    assert group.assignment_of("b") == [("orders", 1), ("orders", 3)]
    assert c.position(group, ("orders", 1)) == 5  # a never committed more: delivered again

    c, group = cooperative_pair()
    c.leave("g", "a")
    assert group.assignment_of("b") == [(("orders", i)) for i in range(4)]
    assert not group.revoking


def test_a_member_that_does_not_hand_over_loses_its_partitions_at_once() -> None:
    c, group = cooperative_pair(timeout_ms=0)
    assert group.assignment_of("b") == [("orders", 1), ("orders", 3)]
    assert not group.revoking
