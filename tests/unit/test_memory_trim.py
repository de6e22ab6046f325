"""The broker's trimmer gives memory back after a storm even when its last trim came in the
middle of it: glibc's freed memory stays in RSS until ``malloc_trim``, and a trim while the
storm's buffers were still in use had raised the bar (growth since the last trim) above
anything RSS would reach again.  RSS and the trim here are a model of glibc's heap, so the
timing is exact; tests/integration/test_limits.py runs real storms on a real broker."""

from __future__ import annotations

from brokerd.memory import CHECK_EVERY_S, GROWTH_BYTES, RETRY_MAX_S, Trimmer

MB = 1 << 20


class Heap:
    """RSS = what is in use + what was freed and not yet trimmed."""

    def __init__(self, in_use: int) -> None:
        self.in_use, self.freed = in_use, 0

    def rss(self) -> int:
        return self.in_use + self.freed

    def trim(self, _pad: int) -> int:
        self.freed = 0
        return 1

    def use(self, delta: int) -> None:
        if delta < 0:
            self.freed -= delta
        self.in_use += delta


def test_a_trim_in_the_middle_of_a_storm_is_tried_again_once_the_storm_is_over() -> None:
    heap = Heap(25 * MB)
    trimmer = Trimmer(0.0, heap.rss, heap.trim)
    heap.use(35 * MB)  # a storm: buffers in use, and the check comes in the middle of it
    trimmer.check(CHECK_EVERY_S)
    assert trimmer.trims == 1 and heap.rss() == 60 * MB  # nothing to give back yet
    heap.use(-35 * MB)  # the storm is over: freed, kept by the heap
    assert heap.rss() == 60 * MB
    trimmer.check(2 * CHECK_EVERY_S)
    assert trimmer.trims == 2 and heap.rss() == 25 * MB  # was: 60 MB for ever


def test_memory_really_in_use_is_tried_ever_less_often_and_an_idle_broker_not_at_all() -> None:
    heap = Heap(25 * MB)
    trimmer = Trimmer(0.0, heap.rss, heap.trim)
    now = 0.0
    for _ in range(20):  # idle: never trimmed
        now += CHECK_EVERY_S
        trimmer.check(now)
    assert trimmer.trims == 0
    heap.use(100 * MB)  # 10,000 partitions' worth, held
    times = []
    while now < 2000:
        now += CHECK_EVERY_S
        before = trimmer.trims
        trimmer.check(now)
        if trimmer.trims > before:
            times.append(now)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[:4] == [5.0, 10.0, 20.0, 40.0] and max(gaps) <= RETRY_MAX_S + CHECK_EVERY_S
    assert len(times) < 15  # not one every 5 s (400)
    heap.use(-100 * MB)  # let go: given back within the current interval, no sooner than it
    now += RETRY_MAX_S + CHECK_EVERY_S
    trimmer.check(now)
    assert heap.rss() == 25 * MB
    assert heap.rss() < 25 * MB + GROWTH_BYTES
