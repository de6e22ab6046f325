"""The waiting room: parked requests are answered on arrival, by deadline, and a failing
answer drops only its own request."""

from __future__ import annotations

import pytest

from brokerd.waiters import WaitingRoom, Waiter


def waiter(log: list[str], name: str, deadline: float = 10.0, fail: bool = False,
           keep: bool = False) -> Waiter:
    def answer(final: bool) -> bool:
        log.append(f"{name}:{'final' if final else 'data'}")
        if fail:
            raise RuntimeError("a bug in an answer")
        return final or not keep
    return Waiter((name.encode(), False), deadline, answer, [("t", 0)], "g")


def test_an_arrival_is_answered_once_per_delivery_and_a_stream_stays_parked() -> None:
    room, log = WaitingRoom(), []
    room.park(waiter(log, "plain"))
    room.park(waiter(log, "stream", keep=True))
    room.data_arrived(("t", 0))
    room.data_arrived(("t", 0))  # two appends before the loop delivers: each answered once
    assert log == []
    room.deliver()
    assert sorted(log) == ["plain:data", "stream:data"]
    room.data_arrived(("t", 0))
    room.deliver()
    assert log[-1] == "stream:data" and room.count(b"plain") == 0 and room.count(b"stream") == 1
    room.expire(now=11.0)
    assert log[-1] == "stream:final" and room.count(b"stream") == 0


def test_a_failing_answer_drops_its_request_and_the_others_are_still_answered(
        caplog: pytest.LogCaptureFixture) -> None:
    room, log = WaitingRoom(), []
    for name in ("a", "bad", "c"):
        room.park(waiter(log, name, fail=name == "bad"))
    room.data_arrived(("t", 0))
    room.deliver()
    assert sorted(log) == ["a:data", "bad:data", "c:data"]
    assert all(room.count(n) == 0 for n in (b"a", b"bad", b"c"))
    assert "internal error answering a parked request" in caplog.text
    room.park(waiter(log, "late", deadline=1.0, fail=True))
    room.expire(now=2.0)  # the deadline path is guarded too
    assert room.count(b"late") == 0 and room.next_deadline() is None
