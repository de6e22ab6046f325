"""The in-memory tails of all segments share one bounded budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from brokerd.log import segment
from brokerd.log.config import LogConfig
from brokerd.log.partition import PartitionLog


def test_tails_together_stay_within_the_budget_and_reads_still_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = segment.TailBudget(64 * 1024)
    monkeypatch.setattr(segment, "TAILS", budget)
    logs = [PartitionLog(tmp_path / str(i), LogConfig()) for i in range(50)]
    payload = b"\x91\x91" + b"\xc4\xff" + b"x" * 255  # one record: a 255-byte bin
    for round_ in range(20):
        for plog in logs:
            plog.append(payload, 1, round_, round_)
    assert budget.used <= budget.limit
    assert sum(s._tail_bytes for p in logs for s in p.segments) == budget.used
    assert logs[-1].segments[-1]._tail, "the partition written last keeps its tail"
    assert not logs[0].segments[-1]._tail, "the one written longest ago gave its tail up"
    for plog in logs:
        batches = plog.read(0, 1 << 20)
        assert [b.header.base_offset for b in batches] == list(range(20))
        assert all(bytes(b.payload) == payload for b in batches)
    for plog in logs:
        plog.close()
    assert budget.used == 0
