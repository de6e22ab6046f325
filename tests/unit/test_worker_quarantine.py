"""Crash-correlated poison detection (runtime.policy.CrashLedger), the flight record the
supervisor reads it from (runtime.worker.flight) and the list it writes back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runtime.policy import CrashLedger
from runtime.worker.flight import FlightRecord, read_flight
from tests.helpers import ROOT, python_env


def test_crash_ledger_quarantines_after_n_crashes_the_last_one_alone() -> None:
    ledger = CrashLedger(after=3)
    poison, innocent = ("t", 0, 5), ("t", 0, 6)
    assert ledger.record([poison, innocent], "code 1") == []  # together: no verdict yet
    assert set(ledger.suspects()) == {poison, innocent}
    assert ledger.record([poison], "code 1") == []
    assert ledger.record([poison, innocent], "signal SIGKILL") == []  # 3 crashes, not alone
    assert ledger.record([poison], "signal SIGSEGV") == [poison]
    assert ledger.quarantine(poison) == ["code 1", "code 1", "signal SIGKILL", "signal SIGSEGV"]
    assert ledger.record([poison], "code 1") == []  # quarantined: not counted again
    assert ledger.suspects() == [innocent]


def test_crash_ledger_zero_never_quarantines() -> None:
    ledger = CrashLedger(after=0)
    for _ in range(5):
        assert ledger.record([("t", 0, 1)], "code 1") == []


def test_the_flight_record_outlives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "w.0.flight"
    code = (f"from runtime.worker.flight import FlightRecord\n"
            f"r = FlightRecord({str(path)!r}, ['a', 'b'], 3)\n"
            "r.words[4 + 1], r.words[4 + 2], r.words[4 + 3], r.words[4] = 7, 1, 0, 42\n"
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=python_env(), timeout=30)
    assert proc.returncode == -9
    assert read_flight(path) == [("b", 7, 42)]


def test_a_missing_or_torn_record_reads_as_nothing(tmp_path: Path) -> None:
    assert read_flight(tmp_path / "none") == []
    (tmp_path / "bad").write_bytes(b"{not json")
    assert read_flight(tmp_path / "bad") == []
    record = FlightRecord(str(tmp_path / "ok"), ["t"], 2)
    assert record.busy() == [] and read_flight(tmp_path / "ok") == []
    assert os.path.getsize(tmp_path / "ok") == 512 + 2 * 32
