"""A client keeps the newest errors for its caller, never without end."""

from __future__ import annotations

from runtime.connection import MAX_ERRORS, BrokerError, keep_error


def test_errors_past_the_bound_drop_the_oldest_half_and_keep_the_newest() -> None:
    errors: list[BrokerError] = []
    for i in range(3 * MAX_ERRORS):
        keep_error(errors, BrokerError("UNKNOWN_TOPIC", str(i)))
        assert len(errors) <= MAX_ERRORS
    assert errors[-1].message == str(3 * MAX_ERRORS - 1)
    assert len(errors) > MAX_ERRORS // 2
