"""Kill -9 at the one point where outputs are stored and the changelog is not, then lose
the local files: the task restored from the changelog recomputes outputs the broker already
has, under other batch boundaries, and must still add each exactly once (probing)."""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path

from tests.helpers import BrokerProcess, wait_for
from tests.streams.harness import Replica, produce, read, wait_caught_up, write_script

PIPELINE = """
import os, signal
from runtime.streams import sender

app = Pipeline("cut", source="orders")
app.stream.map(lambda v: {"n": v["n"]}).to("copies")
app.stream.group_by().count("counts").to("counts-out")
run_hosted = app.run_hosted

MARKER = os.environ["CRASH_MARKER"]
start = sender.Sender.start


def send_outputs_then_die(self, batches, tail=None, tail_at=None):
    # the 3rd (CRASH_CALL) commit of a run that has not crashed yet: outputs go (and are
    # stored), the changelog does not
    calls = getattr(self, "calls", 0) + 1
    self.calls = calls
    crash_at = int(os.environ.get("CRASH_CALL", "3"))
    if calls == crash_at and not os.path.exists(MARKER) and tail is not None \
            and tail.topic == "cut.changelog":
        self.finish(start(self, batches))
        open(MARKER, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return start(self, batches, tail, tail_at)


sender.Sender.start = send_outputs_then_die
"""


def test_outputs_stored_before_a_lost_changelog_batch_are_not_added_twice(
        broker: BrokerProcess, tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "crashed"
    monkeypatch.setenv("CRASH_MARKER", str(marker))
    items = [(f"k{i % 5}", {"n": i}, i) for i in range(3000)]
    produce(broker, "orders", [], 1)
    script = write_script(tmp_path, PIPELINE)
    replica = Replica(broker, script, tmp_path / "state", "c-0")
    replica.wait_running()
    for i in range(0, len(items), 300):  # several commits, so that the 3rd has outputs
        produce(broker, "orders", items[i:i + 300], 1)
        if marker.exists():
            break
        sent = i + 300
        wait_for(lambda sent=sent: marker.exists() or replica.proc.poll() is not None or
                 _done(broker, sent), timeout=20, what="the commit")
    assert replica.proc.wait(20) == -9 and marker.exists(), replica.log()
    shutil.rmtree(tmp_path / "state")  # the partition "moves": no local files
    produce(broker, "orders", items[i + 300:], 1)
    replica = Replica(broker, script, tmp_path / "state", "c-0")
    try:
        wait_caught_up(broker, "cut")
    finally:
        assert replica.stop() == 0, replica.log()
    assert "restored from changelog" in replica.log()
    assert Counter(e.value["n"] for e in read(broker, "copies")) == Counter(range(3000))
    updates: dict[str, list[int]] = defaultdict(list)
    for event in read(broker, "counts-out"):
        updates[event.key].append(event.value)
    assert updates == {f"k{k}": list(range(1, 601)) for k in range(5)}


def _done(broker: BrokerProcess, count: int) -> bool:
    return len(read(broker, "copies")) >= count


def test_a_partition_back_on_a_host_with_current_files_probes_what_another_host_stored(
        broker: BrokerProcess, tmp_path: Path) -> None:
    """Host a runs the partition; b takes it (restores from the changelog), stores outputs
    of a commit and dies before its changelog batch; the partition goes back to a, whose
    files still match the changelog's last checkpoint: a must not take its next batches for
    new ones (b stored some of them, cut differently)."""
    script = write_script(tmp_path, PIPELINE)
    never = tmp_path / "never"
    never.touch()  # a never crashes
    produce(broker, "orders", [], 1)
    a = Replica(broker, script, tmp_path / "a", "z-a", session_timeout_ms=2000,
                env={"CRASH_MARKER": str(never)})
    b = None
    items = [(f"k{i % 5}", {"n": i}, i) for i in range(3000)]
    try:
        a.wait_running()
        produce(broker, "orders", items[:300], 1)
        wait_caught_up(broker, "cut")
        b = Replica(broker, script, tmp_path / "b", "b-b", session_timeout_ms=2000,
                    env={"CRASH_MARKER": str(tmp_path / "b-crashed"), "CRASH_CALL": "1"})
        # b sorts first, so it gets the partition; it dies in its first commit
        wait_for(lambda: "restored from changelog" in b.log(), timeout=20, what="b to take over")
        sent = 300
        produce(broker, "orders", items[300:1000], 1)
        sent = 1000
        assert b.proc.wait(20) == -9, b.log()  # b died between outputs and changelog
        produce(broker, "orders", items[sent:], 1)
        wait_caught_up(broker, "cut", timeout=40)  # a has the partition again
    finally:
        a.stop()
        if b is not None:
            b.stop()
    assert "restored from local" in a.log(), a.log()
    assert Counter(e.value["n"] for e in read(broker, "copies")) == Counter(range(3000))
    updates: dict[str, list[int]] = defaultdict(list)
    for event in read(broker, "counts-out"):
        updates[event.key].append(event.value)
    assert updates == {f"k{k}": list(range(1, 601)) for k in range(5)}
