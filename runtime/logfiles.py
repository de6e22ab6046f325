"""Size-capped log files for what ``rail up`` starts (copy-truncate rotation).

Every child writes its output straight to ``logs/<name>.log``, opened for appending, so the
supervisor cannot swap the file under it.  Instead, like logrotate's ``copytruncate``: once
a log passes ``max_bytes``, ``<name>.log.1`` .. ``.N`` shift up by one, the log is copied to
``<name>.log.1`` and cut to zero length; the child's next write (O_APPEND) lands at the new
start.  A line written between the copy and the cut is lost, a window of microseconds.
Used from the supervisor's loop only.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

LOG = logging.getLogger("rail.supervisor")


class LogRotation:
    """Keep each ``*.log`` of ``folder`` under ``max_bytes`` (0: never rotate), with
    ``backups`` older files."""

    def __init__(self, folder: Path, max_bytes: int, backups: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.backups = backups

    def check(self) -> list[Path]:
        """Rotate every log past its size; return the ones rotated."""
        if self.max_bytes <= 0:
            return []
        rotated = []
        for path in sorted(self.folder.glob("*.log")):
            try:
                if path.stat().st_size > self.max_bytes:
                    self.rotate(path)
                    rotated.append(path)
            except OSError as exc:  # a full disk must not stop the supervisor
                LOG.error("cannot rotate %s: %s", path, exc)
        return rotated

    def rotate(self, path: Path) -> None:
        if self.backups > 0:
            for n in range(self.backups - 1, 0, -1):
                older = path.with_name(f"{path.name}.{n}")
                if older.exists():
                    os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
            shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        os.truncate(path, 0)
