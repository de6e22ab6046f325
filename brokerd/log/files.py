"""Named durability steps: nothing durable happens as a side effect of something else."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make the creation, rename or removal of entries in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file.

    Steps: write a temporary sibling, fsync it, rename it over ``path``, fsync the folder.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_all(fd: int, *chunks: bytes | memoryview) -> None:
    """Write every byte of ``chunks`` to ``fd`` in order (one syscall when possible)."""
    total = sum(map(len, chunks))
    written = os.writev(fd, chunks)
    if written == total:
        return
    rest = memoryview(b"".join(chunks))[written:]
    while rest:
        rest = rest[os.write(fd, rest):]


def sync_filesystem(path: str | Path) -> None:
    """Make everything written to the file system holding ``path`` durable, in one call
    (``syncfs``; ``sync`` where it is missing): one call instead of an fsync per file."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
