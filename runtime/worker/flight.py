"""The flight record: which events a worker host is handling right now, in a file the
supervisor reads after the host died.

A crash (``os._exit``, SIGSEGV, SIGKILL by the OOM killer) gives the host no chance to say
what it was doing, so the host says it before: each handler call writes its event's
(partition, offset, topic) into a slot of a shared memory map of this file.  A store into a
MAP_SHARED page is in the kernel's page cache at once, so it survives the death of the
process (not of the machine: then the record is lost and the crash counts start again, which
only delays a quarantine).  No system call per event: a slot is four int64 stores, about as
cheap as the tuple the health reports used to be built from.

File layout: HEADER bytes of JSON ``{"topics": [...], "slots": N}`` padded with spaces, then
N slots of four int64: offset (-1 = free), partition, topic index, start (CLOCK_MONOTONIC ns,
one clock for every process of the machine).  Without a path the map is anonymous: the same
code runs, nothing outlives the process.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

HEADER = 512
SLOT_WORDS = 4  # offset, partition, topic index, started_ns
FREE = -1


class FlightRecord:
    """``slots`` slots, written by the host's main thread only (see module docstring)."""

    def __init__(self, path: str | None, topics: list[str], slots: int) -> None:
        self.topics = list(topics)
        self.index = {t: i for i, t in enumerate(self.topics)}
        self.slots = slots
        size = HEADER + slots * SLOT_WORDS * 8
        header = json.dumps({"topics": self.topics, "slots": slots}).encode()
        if len(header) > HEADER:  # many long topic names: keep the ones that fit
            header = json.dumps({"topics": [], "slots": slots}).encode()
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, size)
                self.map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        else:
            self.map = mmap.mmap(-1, size)
        self.map[:HEADER] = header.ljust(HEADER)
        self.words = memoryview(self.map)[HEADER:].cast("q")
        for slot in range(slots):
            self.words[slot * SLOT_WORDS] = FREE

    def busy(self) -> list[tuple[str, int, int, int]]:
        """(topic, partition, offset, started_ns) of every busy slot."""
        return busy_slots(self.words, self.topics, self.slots)


def busy_slots(words: memoryview, topics: list[str], slots: int) -> list[tuple[str, int, int, int]]:
    out = []
    for slot in range(slots):
        base = slot * SLOT_WORDS
        offset = words[base]
        if offset == FREE:
            continue
        index = words[base + 2]
        topic = topics[index] if 0 <= index < len(topics) else f"?{index}"
        out.append((topic, words[base + 1], offset, words[base + 3]))
    return out


def read_flight(path: str | Path) -> list[tuple[str, int, int]]:
    """The events a dead host's record says were in its handlers: [] if there is no record
    or it cannot be read (a host that never started handling)."""
    try:
        data = Path(path).read_bytes()
        meta = json.loads(data[:HEADER])
        slots = int(meta["slots"])
        topics = [str(t) for t in meta["topics"]]
        words = memoryview(data[HEADER:HEADER + slots * SLOT_WORDS * 8]).cast("q")
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if len(words) < slots * SLOT_WORDS:
        return []
    return [(t, p, o) for t, p, o, _ in busy_slots(words, topics, slots)]
