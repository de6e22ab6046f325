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
from typing import IO

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


class PrefixedOutput:
    """Relays a child's output pipe (stdout and stderr) to a log file that replicas share,
    each line prefixed with the replica that wrote it (``b"pizza.1 | "``), so that
    ``rail logs --replica`` can pick them apart.

    The pipe is non-blocking and read by the supervisor's loop; a line is written whole
    (one ``write`` of a file opened for appending), so lines of replicas never interleave
    mid-line.  What a child wrote just before it died stays in the pipe until ``close``
    drains it.  Not thread-safe.
    """

    READ_BYTES = 65536

    def __init__(self, pipe: IO[bytes], path: Path, prefix: str) -> None:
        self.pipe = pipe
        self.fd = pipe.fileno()
        self.path = path
        self.prefix = prefix.encode()
        self.partial = b""
        self.eof = False
        os.set_blocking(self.fd, False)
        self.file = open(path, "ab", buffering=0)

    def pump(self, max_reads: int = 16) -> bool:
        """Copy what the pipe holds (bounded); False once the child closed its end."""
        for _ in range(max_reads):
            try:
                data = os.read(self.fd, self.READ_BYTES)
            except BlockingIOError:
                return True
            except OSError as exc:
                LOG.error("cannot read the output of %s: %s", self.prefix.decode(), exc)
                return False
            if not data:
                return False
            self.write(data)
        return True

    def write(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > self.READ_BYTES:  # a very long line is cut, not held forever
            lines.append(self.partial)
            self.partial = b""
        if lines:
            self._append(b"".join(self.prefix + line + b"\n" for line in lines))

    def close(self, last_line: str = "") -> None:
        """Drain what is left (the child has exited), end a last partial line, add
        ``last_line`` if any, close."""
        self.pump(max_reads=1024)
        if self.partial:
            self._append(self.prefix + self.partial + b"\n")
            self.partial = b""
        if last_line:
            self._append(self.prefix + last_line.encode() + b"\n")
        self.pipe.close()
        self.file.close()

    def _append(self, body: bytes) -> None:
        try:
            self.file.write(body)
        except OSError as exc:  # a full disk must not stop the supervisor
            LOG.error("cannot write %s: %s", self.path, exc)
