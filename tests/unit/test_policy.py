from __future__ import annotations

import pytest

from brokerd.protocol import EXIT_CONFIG
from runtime.policy import Backoff, Health, Intensity, RestartPolicy


@pytest.mark.parametrize("kind", ["permanent", "transient", "temporary"])
def test_nobody_restarts_a_script_that_exited_with_exit_config(kind: str) -> None:
    assert not RestartPolicy(kind).should_restart(EXIT_CONFIG)


def test_permanent_restarts_after_any_exit() -> None:
    policy = RestartPolicy("permanent")
    assert policy.should_restart(0) and policy.should_restart(1) and policy.should_restart(-9)


def test_transient_restarts_only_after_an_abnormal_exit() -> None:
    policy = RestartPolicy("transient")
    assert not policy.should_restart(0)
    assert policy.should_restart(1) and policy.should_restart(-9)


def test_temporary_never_restarts() -> None:
    policy = RestartPolicy("temporary")
    assert not policy.should_restart(1) and not policy.should_restart(0)


def test_an_unknown_policy_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="permanent, transient, temporary"):
        RestartPolicy("sometimes")


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial_s=0.1, max_s=0.5, stable_s=10)
    backoff.started(0.0)
    delays = [backoff.next_delay(1.0) for _ in range(5)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_backoff_resets_after_a_stable_run() -> None:
    backoff = Backoff(initial_s=0.1, max_s=10, stable_s=5)
    backoff.started(0.0)
    backoff.next_delay(1.0)
    backoff.next_delay(1.0)
    backoff.started(2.0)
    assert backoff.next_delay(8.0) == pytest.approx(0.1)


def test_more_restarts_than_the_limit_within_the_window_means_failed() -> None:
    intensity = Intensity(max_restarts=3, within_s=10)
    assert [intensity.record(t) for t in (0, 1, 2, 3)] == [False, False, False, True]


def test_restarts_spread_beyond_the_window_never_fail() -> None:
    intensity = Intensity(max_restarts=2, within_s=10)
    assert not any(intensity.record(t) for t in (0, 11, 22, 33, 44))


def test_a_worker_silent_past_the_hang_timeout_is_hung() -> None:
    health = Health(now=0.0, hang_timeout_s=30)
    health.beat(10.0, {"busy_ms": 0, "processed": 4})
    assert health.hung(39.0) is None
    assert "no heartbeat" in (health.hung(41.0) or "")
    assert health.processed == 4


def test_a_handler_busy_past_its_timeout_is_hung() -> None:
    health = Health(now=0.0, hang_timeout_s=30, handler_timeout_s=5)
    health.beat(1.0, {"busy_ms": 4000})
    assert health.hung(1.5) is None
    health.beat(2.0, {"busy_ms": 6000})
    assert "busy" in (health.hung(2.5) or "")
