"""The supervisor's control socket: admins only over CURVE, or a private local socket."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokerd.protocol import EXIT_CONFIG
from runtime import control
from tests.helpers import ROOT, free_port, python_env, wait_for
from tests.security.secure import Keys, make_keys, rule, write_acl


class Up:
    """``rail up`` (no workers) with its own environment; stopped by pid."""

    def __init__(self, folder: Path, control: str, env: dict[str, str],
                 supervisor: str = "") -> None:
        self.folder, self.control = folder, control
        api, ingest = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
        (folder / "rail.toml").write_text(
            f'[broker]\ndata_dir = "data"\nbind = "{api}"\ningest = "{ingest}"\n'
            f'[supervisor]\ncontrol = "{control}"\ngrace_s = 5\n{supervisor}')
        self.err = folder / "up.err"
        with open(self.err, "wb") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runtime.cli", "up", "-c", str(folder / "rail.toml")],
                stdout=subprocess.DEVNULL, stderr=err, env={**python_env(), **env}, cwd=ROOT)

    def rail(self, *args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runtime.cli", *args, "--control",
                               self.control], capture_output=True, text=True, check=False,
                              env={**python_env(), **(env or {})}, cwd=ROOT, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Keys]:
    return {n: make_keys(tmp_path / "keys", n) for n in ("supervisor", "ops", "writer")}


@pytest.fixture
def curve_up(tmp_path: Path, keys: dict[str, Keys]) -> Iterator[Up]:
    acl = write_acl(tmp_path / "acl.toml", [keys["ops"], keys["writer"]],
                    rule("ops", "cluster", "", ["admin"])
                    + rule("writer", "topic", "t1", ["write"]))
    up = Up(tmp_path, f"tcp://127.0.0.1:{free_port()}",
            {"RAIL_CONTROL_SECRET_KEY": str(keys["supervisor"].secret_file),
             "RAIL_CONTROL_ACL": str(acl)}, supervisor='metrics = "127.0.0.1:0"\n')
    try:
        yield up
    finally:
        up.stop()


def as_(keys: dict[str, Keys], who: str) -> dict[str, str]:
    return {"RAIL_CONTROL_SERVER_KEY": str(keys["supervisor"].public_file),
            "RAIL_CONTROL_KEY_FILE": str(keys[who].secret_file)}


def test_only_an_admin_key_drives_a_curve_control_socket(
        curve_up: Up, keys: dict[str, Keys], monkeypatch: pytest.MonkeyPatch) -> None:
    wait_for(lambda: curve_up.rail("status", env=as_(keys, "ops")).returncode == 0, 30,
             what="rail up to answer an admin")
    for who in ("writer", None):  # a known key without admin; no key at all
        for name in ("RAIL_CONTROL_SERVER_KEY", "RAIL_CONTROL_KEY_FILE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in (as_(keys, who) if who else {}).items():
            monkeypatch.setenv(name, value)
        for request in (control.Status(), control.Register(name="x", script="x.py", topics=["t"])):
            with pytest.raises(control.ControlError, match="no supervisor"):
                control.call(curve_up.control, request, timeout_s=1.0)
    assert curve_up.rail("status", env=as_(keys, "ops")).returncode == 0


def test_the_supervisors_metrics_ask_its_curve_control_socket_with_its_own_key(
        curve_up: Up, keys: dict[str, Keys]) -> None:
    wait_for(lambda: curve_up.rail("status", env=as_(keys, "ops")).returncode == 0, 30,
             what="rail up to answer an admin")
    found = wait_for(lambda: re.search(r"metrics on (http://[^/\s]+)", curve_up.err.read_text()),
                     10, what="the metrics address in rail up's log")
    with urllib.request.urlopen(f"{found.group(1)}/metrics", timeout=10) as page:
        assert page.status == 200 and "rail_" in page.read().decode()


def test_an_unauthenticated_control_socket_must_be_local(tmp_path: Path) -> None:
    up = Up(tmp_path, f"tcp://0.0.0.0:{free_port()}", {})
    try:
        assert up.proc.wait(30) == EXIT_CONFIG
        err = up.err.read_text()
        assert "would let anyone who reaches it run code" in err, err
    finally:
        up.stop()


def test_an_ipc_control_socket_is_private_to_its_user(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    up = Up(tmp_path, f"ipc://{path}", {})
    try:
        wait_for(lambda: up.rail("status").returncode == 0, 30, what="rail up on ipc://")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        up.stop()
