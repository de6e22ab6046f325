"""What the supervisor tells a worker's hosts about events that crashed them: suspects (one
crash or more while in a handler) and quarantined ones (already in the DLQ: skip them).

One small JSON file per worker, ``{"suspects": [[topic, partition, offset], ...],
"quarantined": [...]}``, written by the supervisor (temp, fsync, rename) and re-read by each
host when its mtime changes, looked at once per poll, not per event.  A host runs a suspect
alone, with nothing else in flight, so that its next crash points at it and at nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

Key = tuple[str, int, int]  # topic, partition, offset


class QuarantineList:
    """The worker host's view of the file (re-read when it changes)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.stamp: int | None = None
        self.suspects: set[Key] = set()
        self.quarantined: set[Key] = set()

    def refresh(self) -> bool:
        """Re-read the file if it changed; True if it did."""
        if not self.path:
            return False
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except OSError:
            stamp = None
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        self.suspects, self.quarantined = load(self.path) if stamp is not None else (set(), set())
        return True


def load(path: str | Path) -> tuple[set[Key], set[Key]]:
    try:
        body = json.loads(Path(path).read_text())
        return ({(str(t), int(p), int(o)) for t, p, o in body.get("suspects", [])},
                {(str(t), int(p), int(o)) for t, p, o in body.get("quarantined", [])})
    except (OSError, ValueError, TypeError):
        return set(), set()
