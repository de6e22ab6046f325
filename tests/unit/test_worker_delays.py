"""runtime.worker.delays without processes: due times and forward producer ids."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from runtime.worker.delays import due_ms, forward_producer_id


def test_due_time_from_a_delay_or_a_time_never_rounds_down() -> None:
    before = time.time() * 1000
    assert due_ms(delay_s=2.0) >= before + 2000
    assert due_ms(at=1_800_000_000.0001) == 1_800_000_000_001
    at = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert due_ms(at=at) == int(at.timestamp() * 1000)


@pytest.mark.parametrize("kwargs", [{}, {"delay_s": 1, "at": 2}, {"delay_s": -1},
                                    {"at": dt.datetime(2027, 1, 1)}])
def test_bad_delays_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        due_ms(**kwargs)


def test_forward_ids_are_distinct_nonzero_and_fit_in_53_bits() -> None:
    ids = {forward_producer_id(part, off) for part in (0, 1, 1023) for off in (0, 1, 2**42 - 1)}
    assert len(ids) == 9 and all(0 < i < 2**53 for i in ids)
    with pytest.raises(ValueError):
        forward_producer_id(0, 2**42)
