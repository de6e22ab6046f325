"""Session fixtures: the Node example's packages (``npm ci``) and the C examples' build."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.interop import EXAMPLES, need_tools

NODE = EXAMPLES / "node"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive file lock, so pytest-xdist workers do not install at the same time."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def node_example() -> Path:
    """examples/node with its packages installed by ``npm ci`` from the committed lockfile.

    ``npm ci`` runs unless node_modules was already installed by it from this very lockfile
    (a stamp inside node_modules, which ``npm ci`` itself removes): a fresh clone, CI or a
    changed lockfile always gets a real ``npm ci``.
    """
    need_tools("node", "npm")
    lock = NODE / "package-lock.json"
    stamp = NODE / "node_modules" / ".rail-npm-ci"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    where = hashlib.sha256(bytes(NODE)).hexdigest()[:12]
    with _locked(Path(tempfile.gettempdir()) / f"rail-npm-ci-{where}.lock"):
        if not (stamp.exists() and stamp.read_text() == digest):
            done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE,
                                  text=True, capture_output=True, timeout=300)
            assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
            stamp.write_text(digest)
    return NODE


@pytest.fixture(scope="session")
def c_examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C examples built with their Makefile into a temp folder; returns that folder."""
    need_tools("cc", "make", "pkg-config")

    def found(package: str) -> bool:
        return subprocess.run(["pkg-config", "--exists", package]).returncode == 0
    if not found("libzmq"):
        pytest.skip("toolchain missing: pkg-config finds no libzmq (apt install libzmq3-dev)")
    if not (found("msgpack-c") or found("msgpack")):  # msgpack-c >= 6 is named msgpack-c
        pytest.skip("toolchain missing: pkg-config finds no msgpack-c "
                    "(apt install libmsgpack-dev, or libmsgpack-c-dev on newer Debian)")
    out = tmp_path_factory.mktemp("c-examples")
    done = subprocess.run(["make", "-C", str(EXAMPLES / "c"), f"O={out}"], text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, f"make failed:\n{done.stdout}\n{done.stderr}"
    return out
