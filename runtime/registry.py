"""What the supervisor keeps about workers in the data dir: run-time registrations
(``rail register``) in ``registrations.json``, so they come back on the next ``rail up``, and
each worker's baseline offsets in ``baselines.json``, from which ``rail status`` counts the
events it processed.

Written temp -> fsync -> rename -> fsync(dir): a crash leaves the old or the new file,
never half of one.  Not thread-safe; the supervisor's loop owns it.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import msgspec

from brokerd import protocol as p
from runtime.config import ConfigError, WorkerSpec

FILE_NAME = "registrations.json"


class Registrations(msgspec.Struct, kw_only=True):
    version: int = 1
    workers: dict[str, WorkerSpec] = {}


class Registry:
    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self.workers: dict[str, WorkerSpec] = self._load()

    def _load(self) -> dict[str, WorkerSpec]:
        if not self.path.exists():
            return {}
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=Registrations).workers
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"{self.path}: unreadable registrations ({exc}): fix or remove "
                              "the file") from None

    def put(self, name: str, spec: WorkerSpec) -> None:
        self.workers[name] = spec
        self._save()

    def remove(self, name: str) -> bool:
        if self.workers.pop(name, None) is None:
            return False
        self._save()
        return True

    def _save(self) -> None:
        body = msgspec.json.format(msgspec.json.encode(Registrations(workers=self.workers)))
        replace_atomically(self.path, body)


class Baseline(msgspec.Struct, kw_only=True):
    """Where a worker's group stood when the worker was first started: per ``topic:partition``
    its committed offset then (or the partition's start)."""

    group: str
    offsets: dict[str, int] = {}

    def processed(self, group: p.DescribeGroupReply, topics: list[str]) -> int:
        """Events of ``topics`` the group committed since: a partition the baseline does not
        know is new (it started empty); a commit below the baseline (an offset reset) counts
        as none."""
        return sum(max(0, part.committed - self.offsets.get(f"{part.topic}:{part.partition}", 0))
                   for part in group.partitions
                   if part.committed is not None and part.topic in topics)


def baseline(group_name: str, topics: list[p.TopicInfo], group: p.DescribeGroupReply) -> Baseline:
    """Where ``group`` stands on ``topics`` now: its committed offset per partition, else the
    partition's start (where a new group begins)."""
    committed = {(g.topic, g.partition): g.committed for g in group.partitions
                 if g.committed is not None}
    return Baseline(group=group_name, offsets={
        f"{t.name}:{part.partition}": committed.get((t.name, part.partition), part.start_offset)
        for t in topics for part in t.partitions})


class Baselines:
    """``<data_dir>/baselines.json``: each worker's Baseline, so that ``rail status`` can count
    the events it processed exactly, from committed offsets, across crashes and restarts of
    ``rail up``.  Written like the registrations; not thread-safe."""

    FILE_NAME = "baselines.json"

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / self.FILE_NAME
        self.workers: dict[str, Baseline] = {}
        if self.path.exists():
            try:
                self.workers = msgspec.json.decode(self.path.read_bytes(),
                                                   type=dict[str, Baseline])
            except (OSError, msgspec.DecodeError) as exc:
                raise ConfigError(f"{self.path}: unreadable ({exc}): remove the file (rail "
                                  "status then counts PROCESSED from now on)") from None

    def get(self, name: str, group: str) -> Baseline | None:
        base = self.workers.get(name)
        return base if base is not None and base.group == group else None

    def put(self, name: str, base: Baseline) -> None:
        self.workers[name] = base
        replace_atomically(self.path, msgspec.json.format(msgspec.json.encode(self.workers)))

    def remove(self, name: str) -> None:
        if self.workers.pop(name, None) is not None:
            replace_atomically(self.path, msgspec.json.format(msgspec.json.encode(self.workers)))


def replace_atomically(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def validate_script(script: str) -> None:
    """Refuse a script the worker host could not run: missing, not Python, or no handle().
    Only compiles it; the supervisor never runs user code."""
    path = Path(script)
    if not path.is_file():
        raise ConfigError(f"script {script}: no such file: give the path of a .py file")
    try:
        source = path.read_text()
        tree = ast.parse(source, str(path))
        compile(tree, str(path), "exec")
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"script {script} does not compile: {exc}") from None
    if not defines_handle(tree):
        raise ConfigError(f"script {script} defines no handle(event, ctx): add one")


def defines_handle(tree: ast.AST) -> bool:
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "handle":
            return True
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "handle" for t in node.targets):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (a.asname or a.name) == "handle" for a in node.names):
            return True
    return False
