"""What ``rail reload`` changes, worked out without processes (runtime/reload.py)."""
from __future__ import annotations

from runtime.config import RailConfig, ScheduleSection, TopicSection, WorkerSpec
from runtime.reload import plan


def config(**workers: WorkerSpec) -> RailConfig:
    return RailConfig(workers=dict(workers))


def spec(script: str = "/w.py", replicas: int = 1, **kw: object) -> WorkerSpec:
    fields: dict[str, object] = {"topics": ["orders"], "group": "g", **kw}
    return WorkerSpec(script=script, replicas=replicas, **fields)  # type: ignore[arg-type]


def kinds(changes: list) -> list[tuple[str, str, str]]:  # type: ignore[type-arg]
    return [(c.kind, c.name, c.why) for c in changes]


def test_an_unchanged_file_changes_nothing() -> None:
    old = config(a=spec())
    assert plan(old, {"a": "x"}, config(a=spec()), {"a": "x"}, set()) == []


def test_added_removed_rescaled_and_changed_workers_each_get_their_step() -> None:
    old = config(keep=spec(), grow=spec(), gone=spec(), edit=spec(), moved=spec())
    new = config(keep=spec(), grow=spec(replicas=3), edit=spec(), moved=spec(retries=7),
                 fresh=spec())
    digests = {name: "same" for name in ("keep", "grow", "gone", "edit", "moved", "fresh")}
    changes = plan(old, digests, new, {**digests, "edit": "edited"}, set())
    assert sorted(kinds(changes)) == [
        ("add", "fresh", ""), ("remove", "gone", ""), ("restart", "edit", "script's code"),
        ("restart", "moved", "retries"), ("scale", "grow", "")]


def test_a_change_of_settings_and_replicas_restarts_with_the_new_count() -> None:
    changes = plan(config(a=spec()), {}, config(a=spec(replicas=2, topics=["x"])), {}, set())
    assert kinds(changes) == [("restart", "a", "topics")]
    assert changes[0].spec is not None and changes[0].spec.replicas == 2


def test_run_time_registrations_are_never_touched() -> None:
    changes = plan(config(), {}, config(late=spec()), {}, {"late"})
    assert [c.kind for c in changes] == ["note"] and "registered at run time" in changes[0].why


def test_new_topics_are_created_and_a_changed_partition_count_is_only_noted() -> None:
    old = RailConfig(topics={"orders": TopicSection(partitions=2)})
    new = RailConfig(topics={"orders": TopicSection(partitions=4), "more": TopicSection()})
    assert [(c.kind, c.name) for c in plan(old, {}, new, {}, set())] == [
        ("create", "more"), ("note", "orders")]


def test_a_changed_schedule_is_noted_for_the_next_rail_up() -> None:
    old = RailConfig(schedules={"beat": ScheduleSection(topic="t", every="1m")})
    new = RailConfig(schedules={"beat": ScheduleSection(topic="t", every="2m")})
    assert kinds(plan(old, {}, new, {}, set())) == [
        ("note", "rail.toml", "[schedules] changes apply at the next rail up")]
    assert plan(old, {}, old, {}, set()) == []
