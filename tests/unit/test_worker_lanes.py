"""runtime.worker.lanes.Lanes without processes: which event may start, the watermark, a
rebalance, suspects alone, quarantined events skipped."""

from __future__ import annotations

from runtime.client import Event
from runtime.worker.lanes import Lanes


def ev(offset: int, key: object, partition: int = 0) -> Event:
    return Event("t", partition, offset, offset, key)


class Recorder:
    def __init__(self, limit: int) -> None:
        self.started: list[tuple[int, int]] = []  # (offset, slot)
        self.lanes = Lanes(limit, lambda e, slot: self.started.append((e.offset, slot)))

    def finish(self, offset: int) -> None:
        slot = next(s for s, e in self.lanes.running.items() if e.offset == offset)
        self.lanes.finished(slot)


def test_one_key_waits_for_its_previous_event_other_keys_run() -> None:
    r = Recorder(limit=3)
    r.lanes.add([ev(0, "a"), ev(1, "a"), ev(2, "b"), ev(3, None), ev(4, None)])
    assert [o for o, _ in r.started] == [0, 2, 3]  # 1 waits for 0; 4 for a free slot
    r.finish(2)
    assert [o for o, _ in r.started] == [0, 2, 3, 4]
    assert r.lanes.watermarks() == {("t", 0): 0}  # 0 unfinished: nothing passes it
    r.finish(0)
    assert [o for o, _ in r.started][-1] == 1
    assert r.lanes.watermarks() == {("t", 0): 1}
    for o in (3, 4, 1):
        r.finish(o)
    assert r.lanes.watermarks() == {("t", 0): 5} and r.lanes.pending == 0


def test_events_seen_before_are_not_taken_again() -> None:
    r = Recorder(limit=2)
    assert r.lanes.add([ev(0, "a"), ev(1, "b")]) == 2
    assert r.lanes.add([ev(0, "a"), ev(1, "b"), ev(2, "c")]) == 1


def test_a_revoked_partition_is_forgotten_and_read_again_when_it_comes_back() -> None:
    r = Recorder(limit=1)
    r.lanes.add([ev(0, "a"), ev(1, "b"), ev(2, "c")])
    r.lanes.forget(set())
    assert r.lanes.pending == 1 and not r.lanes.ready  # only the running one is left
    r.finish(0)
    assert r.lanes.watermarks() == {}  # nobody commits for a partition we lost
    assert r.lanes.add([ev(1, "b"), ev(2, "c")]) == 2  # back again from its commit: taken


def test_a_suspect_runs_alone_and_a_quarantined_event_is_skipped() -> None:
    r = Recorder(limit=4)
    r.lanes.suspects = {("t", 0, 1)}
    r.lanes.quarantined = {("t", 0, 3)}
    r.lanes.add([ev(0, "a"), ev(1, "b"), ev(2, "c"), ev(3, "d")])
    assert [o for o, _ in r.started] == [0]  # 1 waits to run alone, 2 waits behind it
    r.finish(0)
    assert [o for o, _ in r.started] == [0, 1]
    r.finish(1)
    assert [o for o, _ in r.started] == [0, 1, 2]
    r.finish(2)
    assert [e.offset for e in r.lanes.skipped] == [3]
    assert r.lanes.watermarks() == {("t", 0): 4}


def test_a_rate_per_key_holds_that_key_back_not_the_others() -> None:
    import time

    r = Recorder(limit=4)
    r.lanes.key_interval = 0.2
    r.lanes.add([ev(0, "a")])
    r.finish(0)
    r.lanes.add([ev(1, "a"), ev(2, "b")])
    assert [o for o, _ in r.started] == [0, 2]  # a's next slot is 0.2 s after offset 0
    due = r.lanes.release()
    assert due is not None and due > time.monotonic()
    time.sleep(max(0.0, due - time.monotonic()))
    assert r.lanes.release() is None
    assert [o for o, _ in r.started] == [0, 2, 1]
