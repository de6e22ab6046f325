"""Worker output relayed to a shared log with the replica's prefix (runtime/logfiles.py)."""
from __future__ import annotations

import os
from pathlib import Path

from runtime.logfiles import PrefixedOutput


def test_each_line_gets_the_prefix_and_a_partial_line_waits_for_its_end(tmp_path: Path) -> None:
    r, w = os.pipe()
    log = tmp_path / "pizza.log"
    output = PrefixedOutput(os.fdopen(r, "rb"), log, "pizza.1 | ")
    os.write(w, b"one\ntw")
    assert output.pump()
    assert log.read_bytes() == b"pizza.1 | one\n"
    os.write(w, b"o\nthree")
    os.close(w)
    assert not output.pump()  # EOF
    output.close()
    assert log.read_bytes() == b"pizza.1 | one\npizza.1 | two\npizza.1 | three\n"
