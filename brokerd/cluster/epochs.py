"""A partition's leader epochs: which epoch wrote from which offset (Kafka's KIP-101).

    <partition dir>/leader-epochs     JSON [[epoch, start_offset], ...], ascending

A follower (or a leader that lost its place) asks the current leader for the end offset of
its own last epoch and truncates there, never to its high watermark alone: the high
watermark a follower knows may lag the leader's, and cutting to it lost acknowledged
records in Kafka before leader epochs.  Written by replace_atomically; owned by the loop.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from brokerd.errors import StorageError
from brokerd.log.files import replace_atomically

FILE = "leader-epochs"


class LeaderEpochs:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FILE
        try:
            self.entries: list[tuple[int, int]] = [
                (int(e), int(o)) for e, o in msgspec.json.decode(self.path.read_bytes())]
        except (OSError, msgspec.DecodeError, ValueError, TypeError):
            self.entries = []

    @property
    def latest(self) -> int:
        return self.entries[-1][0] if self.entries else -1

    def assign(self, epoch: int, start_offset: int) -> None:
        """Epoch ``epoch`` writes from ``start_offset`` on (a no-op if already known)."""
        if self.entries and self.entries[-1][0] >= epoch:
            return
        entries = [(e, o) for e, o in self.entries if o < start_offset]
        entries.append((epoch, start_offset))
        self._store(entries)
        self.entries = entries

    def end_offset(self, epoch: int, log_end: int) -> tuple[int, int]:
        """(the largest epoch <= ``epoch`` this log knows, the offset where it ended): the
        start of the next larger epoch, or ``log_end`` for the latest; (-1, -1) if the log
        knows no epoch that old."""
        known = [(e, o) for e, o in self.entries if e <= epoch]
        if not known:
            return -1, -1
        found = known[-1][0]
        later = [o for e, o in self.entries if e > found]
        return found, (later[0] if later else log_end)

    def truncate(self, end_offset: int) -> None:
        """Forget the epochs that started at or past ``end_offset`` (the log was cut)."""
        kept = [(e, o) for e, o in self.entries if o < end_offset]
        if kept != self.entries:
            self._store(kept)
            self.entries = kept

    def _store(self, entries: list[tuple[int, int]]) -> None:
        """Raises StorageError (a full disk, say), with the file and ``entries`` unchanged."""
        try:
            replace_atomically(self.path, msgspec.json.encode(entries))
        except OSError as exc:
            raise StorageError.of(f"cannot store the leader epochs of {self.path.parent}",
                                  exc) from exc
