"""A zombie replica (paused past its session while its partition moved on) must not write
into the new owner's changelog: each changelog batch is appended only where its writer
last saw the partition end (``expected_offset``), so the changelog stays one history and a
writer that lost the race is fenced (it exits to restore), never silently out of step."""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from runtime.connection import Connection
from runtime.streams import changelog, query
from runtime.streams.runner import EXIT_FENCED
from tests.helpers import BrokerProcess, wait_for
from tests.streams.harness import Replica, produce, read, wait_caught_up, write_script

PIPELINE = """
import os, signal, time
from runtime.streams import sender

app = Pipeline("zom", source="orders")
app.stream.map(lambda v: {"n": v["n"]}).to("copies")
app.stream.group_by().count("counts").to("counts-out")
run_hosted = app.run_hosted

start = sender.Sender.start
ARM, MARK = os.environ.get("ZOMBIE_ARM", ""), os.environ.get("ZOMBIE_MARK", "")


def held(self, batches, tail=None, tail_at=None):
    # the first commit once ARM exists: nothing of it sent yet (it is in SQLite): "pause"
    # stops this process (a zombie to be), "hold" waits for ZOMBIE_GO (its heartbeats go on)
    if tail is not None and ARM and os.path.exists(ARM) and not os.path.exists(MARK):
        open(MARK, "w").close()
        if os.environ["ZOMBIE_MODE"] == "pause":
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            while not os.path.exists(os.environ["ZOMBIE_GO"]):
                time.sleep(0.01)
    return start(self, batches, tail, tail_at)


sender.Sender.start = held
"""


def _changelog_end(broker: BrokerProcess) -> int:
    conn = Connection(broker.api)
    try:
        return changelog.end_offset(conn, "zom.changelog", 0)
    finally:
        conn.close()


@pytest.mark.parametrize("zombie_first", [True, False], ids=["zombie-first", "owner-first"])
def test_a_zombie_replica_is_fenced_and_the_changelog_stays_one_history(
        broker: BrokerProcess, tmp_path: Path, zombie_first: bool) -> None:
    """a commits, then stops itself (SIGSTOP) in its next commit, before sending it; b takes
    the partition, restores from the changelog and commits.

    zombie-first: b holds its first commit; a continues and its old commit's changelog
    batch lands (nobody wrote since a read the end); b's batch, expected at the same end,
    is refused: b is fenced (exit 75) instead of taking the broker's "duplicate" for its own
    batch (they shared a producer id) and going on out of step (its next batch was refused
    OUT_OF_ORDER_SEQUENCE: the pipeline stopped).  Restarted, b restores from the changelog.

    owner-first: b's commit lands; a continues: its stale batch is refused, a is fenced.
    Appended, it would have put a's older checkpoint last in the changelog, after b's
    updates (had a died then, a task restored from the changelog would have replayed inputs
    already counted; a going on recomputes the same states and converges).

    Either way the outputs, every output update and the changelog's table are exact."""
    script = write_script(tmp_path, PIPELINE)
    items = [(f"k{i % 800}", {"n": i}, i) for i in range(1000)]
    arm, go = tmp_path / "arm", tmp_path / "go"
    a_paused, b_held = tmp_path / "a-paused", tmp_path / "b-held"
    produce(broker, "orders", [], 1)
    a = Replica(broker, script, tmp_path / "a", "z-a", session_timeout_ms=2000,
                env={"ZOMBIE_MODE": "pause", "ZOMBIE_ARM": str(arm), "ZOMBIE_MARK": str(a_paused)})
    b = b2 = None
    fenced = None
    try:
        a.wait_running()
        produce(broker, "orders", items[:300], 1)
        wait_caught_up(broker, "zom")
        arm.touch()
        produce(broker, "orders", items[300:500], 1)
        wait_for(a_paused.exists, timeout=20, what="a to stop itself in its commit")
        produce(broker, "orders", items[500:800], 1)
        before = _changelog_end(broker)
        hold = {"ZOMBIE_MODE": "hold", "ZOMBIE_ARM": str(arm), "ZOMBIE_MARK": str(b_held),
                "ZOMBIE_GO": str(go)}
        b = Replica(broker, script, tmp_path / "b", "b-b", env=hold if zombie_first else {})
        wait_for(lambda: "restored from changelog" in b.log(), timeout=30,
                 what="b to take the partition")
        if zombie_first:
            wait_for(b_held.exists, timeout=30, what="b to hold its first commit")
        else:
            wait_for(lambda: _changelog_end(broker) > before, timeout=20,
                     what="b's first changelog batch")
            before = _changelog_end(broker)
        os.kill(a.proc.pid, signal.SIGCONT)
        if zombie_first:
            wait_for(lambda: _changelog_end(broker) > before, timeout=20,
                     what="the zombie's changelog batch")
            go.touch()
            fenced = b
        else:
            fenced = a
        assert fenced.proc.wait(30) == EXIT_FENCED, fenced.log()
        assert "fenced" in fenced.log() and "OFFSET_MISMATCH" in fenced.log()
        assert _changelog_end(broker) == (before if not zombie_first else _changelog_end(broker))
        if not zombie_first:
            b.kill9()  # and its files are lost: b2 restores from the changelog
            shutil.rmtree(tmp_path / "b")
        b2 = Replica(broker, script, tmp_path / "b", "b-b")  # as its supervisor would
        produce(broker, "orders", items[800:], 1)
        wait_caught_up(broker, "zom", timeout=60)
    finally:
        if a.proc.poll() is None:
            os.kill(a.proc.pid, signal.SIGCONT)
        codes = {"a": a.stop()}
        if b is not None:
            b.kill9()
        if b2 is not None:
            codes["b2"] = b2.stop()
    assert codes == {"a": EXIT_FENCED if fenced is a else 0, "b2": 0}, (codes, a.log())
    counts = Counter(key for key, _v, _ts in items)
    assert Counter(e.value["n"] for e in read(broker, "copies")) == Counter(range(1000))
    updates: dict[str, list[int]] = defaultdict(list)
    for event in read(broker, "counts-out"):
        updates[event.key].append(event.value)
    assert updates == {k: list(range(1, n + 1)) for k, n in counts.items()}
    conn = Connection(broker.api)
    try:
        table = dict(query.decoded(query.table(conn, "zom", "counts")))
    finally:
        conn.close()
    assert table == dict(counts), "the changelog's table"
