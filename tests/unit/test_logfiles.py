"""Copy-truncate rotation of the logs rail up's children write (runtime/logfiles.py)."""
from __future__ import annotations

from pathlib import Path

from runtime.logfiles import LogRotation


def test_a_log_past_its_cap_is_copied_to_dot_1_and_cut_and_older_ones_shift_up(
        tmp_path: Path) -> None:
    log = tmp_path / "pizza.log"
    rotation = LogRotation(tmp_path, max_bytes=100, backups=2)
    for generation in (b"a", b"b", b"c"):
        log.write_bytes(generation * 150)
        assert rotation.check() == [log]
        assert log.stat().st_size == 0
    assert (tmp_path / "pizza.log.1").read_bytes() == b"c" * 150
    assert (tmp_path / "pizza.log.2").read_bytes() == b"b" * 150
    assert not (tmp_path / "pizza.log.3").exists()  # "a" fell off the end


def test_a_writer_that_appends_keeps_writing_at_the_start_after_a_cut(tmp_path: Path) -> None:
    log = tmp_path / "brokerd.log"
    with open(log, "ab") as child:  # what a child's stdout is
        child.write(b"x" * 200)
        child.flush()
        LogRotation(tmp_path, max_bytes=100, backups=1).check()
        child.write(b"after\n")
        child.flush()
    assert log.read_bytes() == b"after\n"
    assert (tmp_path / "brokerd.log.1").read_bytes() == b"x" * 200


def test_logs_under_the_cap_and_a_zero_cap_are_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "tally.log"
    log.write_bytes(b"y" * 100)
    assert LogRotation(tmp_path, max_bytes=100, backups=3).check() == []
    log.write_bytes(b"y" * 10_000)
    assert LogRotation(tmp_path, max_bytes=0, backups=3).check() == []
    assert log.stat().st_size == 10_000
    assert list(tmp_path.iterdir()) == [log]


def test_no_backups_means_the_log_is_only_cut(tmp_path: Path) -> None:
    log = tmp_path / "drinks.log"
    log.write_bytes(b"z" * 500)
    LogRotation(tmp_path, max_bytes=100, backups=0).check()
    assert log.stat().st_size == 0
    assert list(tmp_path.iterdir()) == [log]
