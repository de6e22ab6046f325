"""``rail`` supervisor commands as a user meets them: errors that say why, ``rail logs``,
``rail status NAME``, ``rail reload``, exact PROCESSED after kill -9."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, python_env
from tests.integration.test_supervisor import APPENDER, Rail


@pytest.fixture
def rail(tmp_path: Path) -> Iterator[Rail]:
    r = Rail(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def test_register_with_an_invalid_topic_says_what_the_broker_said(rail: Rail) -> None:
    rail.write_toml("")
    rail.up()
    script = rail.script("w.py", APPENDER.format(out=str(rail.out)))
    done = rail.rail("register", "x", str(script), "--topics", "../etc")
    assert done.returncode == 1
    assert "INVALID_TOPIC" in done.stderr and "'../etc'" in done.stderr, done.stderr
    assert "see rail status" not in done.stderr and done.stderr.count("\n") == 1
    assert rail.status()["workers"] == []


def test_rail_up_with_the_broker_port_taken_prints_the_cause(rail: Rail) -> None:
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", int(rail.api.rsplit(":", 1)[1])))
        squatter.listen()
        rail.write_toml("")
        done = subprocess.run([sys.executable, "-m", "runtime.cli", "up", "-c",
                               str(rail.folder / "rail.toml")], capture_output=True, text=True,
                              env=python_env(), cwd=ROOT, timeout=60)
    finally:
        squatter.close()
    assert done.returncode == 76, done.stderr
    assert "Address already in use" in done.stderr and rail.api in done.stderr, done.stderr
