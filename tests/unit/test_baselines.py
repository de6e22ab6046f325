"""PROCESSED from committed offsets against a durable baseline (runtime/registry.py)."""
from __future__ import annotations

from pathlib import Path

from brokerd import protocol as p
from runtime.registry import Baselines, baseline


def described(committed: dict[tuple[str, int], int | None]) -> p.DescribeGroupReply:
    return p.DescribeGroupReply(id=1, group="g", state="stable", generation=1, members=[],
                                partitions=[p.GroupPartition(topic=t, partition=i, committed=c,
                                                             position=None, end_offset=100,
                                                             lag=0, owner=None)
                                            for (t, i), c in committed.items()])


def topic(name: str, starts: list[int]) -> p.TopicInfo:
    return p.TopicInfo(name=name, config={}, partitions=[
        p.PartitionInfo(partition=i, start_offset=s, end_offset=100, size_bytes=0)
        for i, s in enumerate(starts)])


def test_processed_counts_commits_since_the_baseline_and_new_partitions_from_zero() -> None:
    base = baseline("g", [topic("orders", [0, 40])], described({("orders", 0): 10}))
    assert base.offsets == {"orders:0": 10, "orders:1": 40}  # no commit yet: the start
    now = described({("orders", 0): 25, ("orders", 1): 45, ("orders", 2): 3, ("other", 0): 9})
    assert base.processed(now, ["orders"]) == 15 + 5 + 3


def test_a_reset_below_the_baseline_counts_as_none() -> None:
    base = baseline("g", [topic("orders", [0])], described({("orders", 0): 10}))
    assert base.processed(described({("orders", 0): 4}), ["orders"]) == 0


def test_baselines_survive_a_reload_and_a_changed_group_has_none(tmp_path: Path) -> None:
    Baselines(tmp_path).put("pizza", baseline("g", [topic("orders", [0])], described({})))
    again = Baselines(tmp_path)
    assert again.get("pizza", "g") is not None and again.get("pizza", "other") is None
    again.remove("pizza")
    assert Baselines(tmp_path).get("pizza", "g") is None
