"""OffsetStore: committed group offsets survive kill -9 and a torn or garbled tail."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokerd.log.offsets import OffsetStore, encode_entry
from tests.helpers import python_env

Offsets = dict[tuple[str, str, int], int]
NEWLINE = b"\n"

# Commit i stores offset i for (g<i%3>, "t", i%5) and (g<i%3>, "all", 0), in one call, then
# prints i.  Compaction is made frequent so that a kill can land in the middle of one.
CHILD = """
import sys
from pathlib import Path
from brokerd.log import offsets
offsets.COMPACT_MIN_BYTES = 2048
store = offsets.OffsetStore(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    store.commit("g%d" % (i % 3), [("t", i % 5, i), ("all", 0, i)])
    sys.stdout.write("%d\\n" % i)
    sys.stdout.flush()
"""


def after_commits(n: int) -> Offsets:
    """What the store holds once the child's commits 0..n-1 have returned."""
    state: Offsets = {}
    for i in range(n):
        state[(f"g{i % 3}", "t", i % 5)] = i
        state[(f"g{i % 3}", "all", 0)] = i
    return state


def read_lines_until(proc: subprocess.Popen[bytes], count: int, timeout: float) -> list[int]:
    """Read the child's progress lines until ``count`` arrived; fail after ``timeout`` s."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while buf.count(NEWLINE) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the child printed {buf.count(NEWLINE)} of {count} lines")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the child exited early: {proc.wait()}")
            buf += chunk
    return [int(x) for x in buf.split(b"\n")[:-1]]


def drain(proc: subprocess.Popen[bytes]) -> list[int]:
    """Every complete line left in the pipe of a dead child."""
    assert proc.stdout is not None
    rest = proc.stdout.read()
    return [int(x) for x in rest.split(b"\n")[:-1]]


@pytest.mark.parametrize("kill_after", [700, 2_500, 6_000])
def test_committed_offsets_survive_kill_9_mid_way(tmp_path: Path, kill_after: int) -> None:
    total = 50_000
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(total)],
                            stdout=subprocess.PIPE, env=python_env())
    try:
        done = read_lines_until(proc, kill_after, timeout=30)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        done += drain(proc)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
    assert done == list(range(len(done))) and len(done) < total
    store = OffsetStore(tmp_path)
    try:
        returned = len(done)
        # The commit in flight at the kill may or may not be there; it is never half there.
        assert store.offsets in (after_commits(returned), after_commits(returned + 1))
    finally:
        store.close()


def test_commits_survive_close_and_reopen_and_the_last_one_wins(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path)
    store.commit("g", [("t", 0, 5), ("t", 1, 7)])
    store.commit("g", [("t", 0, 9)])
    store.commit("h", [("t", 0, 1)])
    store.close()
    store = OffsetStore(tmp_path)
    try:
        assert store.get("g", "t", 0) == 9 and store.get("g", "t", 1) == 7
        assert store.for_group("h") == {("t", 0): 1}
        assert store.groups() == {"g", "h"} and store.dropped_bytes == 0
        assert store.get("g", "t", 2) is None
    finally:
        store.close()


@pytest.mark.parametrize("garbage", [b"\x00", b"\xff" * 7, b"\x00\x00\x00\x05abcdefghij",
                                     b"\x7f\xff\xff\xff" + b"x" * 100])
def test_garbage_after_the_last_entry_is_dropped_and_everything_before_kept(
        tmp_path: Path, garbage: bytes) -> None:
    store = OffsetStore(tmp_path)
    for n in range(50):
        store.commit("g", [("t", n % 4, n)])
    expected = dict(store.offsets)
    store.close()
    with open(tmp_path / "offsets.log", "ab") as f:
        f.write(garbage)
    store = OffsetStore(tmp_path)
    try:
        assert store.offsets == expected
        assert store.dropped_bytes == len(garbage)
        store.commit("g", [("t", 0, 100)])
    finally:
        store.close()
    store = OffsetStore(tmp_path)
    try:
        assert store.get("g", "t", 0) == 100 and store.dropped_bytes == 0
    finally:
        store.close()


def test_a_torn_last_commit_is_dropped_at_every_cut(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path)
    store.commit("g", [("t", 0, 1)])
    store.close()
    path = tmp_path / "offsets.log"
    intact = path.read_bytes()
    last = encode_entry("g", "t", 0, 2)
    for keep in range(len(last)):
        path.write_bytes(intact + last[:keep])
        store = OffsetStore(tmp_path)
        try:
            assert store.offsets == {("g", "t", 0): 1}
            assert store.dropped_bytes == keep
        finally:
            store.close()


def test_compaction_keeps_the_live_offsets_and_shrinks_the_file(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path)
    for n in range(2_000):
        store.commit("g", [("t", n % 3, n)])
    big = (tmp_path / "offsets.log").stat().st_size
    store.compact()
    assert (tmp_path / "offsets.log").stat().st_size < big / 100
    store.commit("g", [("t", 0, 5_000)])
    store.close()
    store = OffsetStore(tmp_path)
    try:
        assert store.offsets == {("g", "t", 0): 5_000, ("g", "t", 1): 1_999, ("g", "t", 2): 1_997}
    finally:
        store.close()


def test_forgotten_groups_and_topics_stay_forgotten_after_reopen(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path)
    store.commit("g", [("t", 0, 1), ("u", 0, 2)])
    store.commit("h", [("t", 0, 3)])
    store.forget(group="h")
    store.forget(topic="u")
    store.close()
    store = OffsetStore(tmp_path)
    try:
        assert store.offsets == {("g", "t", 0): 1}
    finally:
        store.close()


def test_a_compaction_cut_short_before_its_rename_leaves_the_old_entries(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path)
    store.commit("g", [("t", 0, 1), ("t", 1, 2)])
    store.close()
    (tmp_path / "offsets.log.tmp").write_bytes(encode_entry("g", "t", 0, 99)[:-3])
    store = OffsetStore(tmp_path)
    try:
        assert store.offsets == {("g", "t", 0): 1, ("g", "t", 1): 2}
    finally:
        store.close()


def test_offsets_by_group_follow_commits_forgets_and_a_reload(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path)
    store.commit("a", [("t", 0, 5), ("t", 1, 7)])
    store.commit("b", [("t", 0, 9)])
    store.commit("a", [("t", 0, 6)])
    assert store.for_group("a") == {("t", 0): 6, ("t", 1): 7}
    assert store.groups() == {"a", "b"}
    store.forget(topic="t", group="b")
    assert store.for_group("b") == {} and store.groups() == {"a"}
    store.close()
    again = OffsetStore(tmp_path)
    assert again.for_group("a") == {("t", 0): 6, ("t", 1): 7} and again.groups() == {"a"}
    again.close()
