"""``rail keys new|list`` and how a client finds its keys (docs/security.md)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from runtime.security.keys import ClientKeys, KeyConfigError
from tests.helpers import ROOT, python_env


def rail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], check=False,
                          env=python_env(),
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_rail_keys_new_writes_a_secret_file_only_its_owner_reads(tmp_path: Path) -> None:
    done = rail("keys", "new", "orders", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    secret = tmp_path / "orders.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public, secret_key = zmq.auth.load_certificate(str(secret))
    assert public.decode() in done.stdout and secret_key is not None
    assert zmq.auth.load_certificate(str(tmp_path / "orders.key")) == (public, None)
    assert zmq.curve_public(secret_key) == public  # the pair belongs together

    again = rail("keys", "new", "orders", "--dir", str(tmp_path))
    assert again.returncode == 1 and "exists" in again.stderr
    assert zmq.auth.load_certificate(str(secret))[1] == secret_key  # not overwritten

    listed = rail("keys", "list", "--dir", str(tmp_path))
    assert listed.returncode == 0
    assert "orders" in listed.stdout and public.decode() in listed.stdout
    assert "yes (600)" in listed.stdout


def test_a_client_needs_both_key_variables_or_neither(tmp_path: Path) -> None:
    assert ClientKeys.from_env({}) is None
    rail("keys", "new", "c", "--dir", str(tmp_path))
    rail("keys", "new", "b", "--dir", str(tmp_path))
    with pytest.raises(KeyConfigError, match="RAIL_CURVE_SERVER_KEY"):
        ClientKeys.from_env({"RAIL_CURVE_KEY_FILE": str(tmp_path / "c.key_secret")})
    with pytest.raises(KeyConfigError, match="only a public key"):
        ClientKeys.from_env({"RAIL_CURVE_SERVER_KEY": str(tmp_path / "b.key"),
                             "RAIL_CURVE_KEY_FILE": str(tmp_path / "c.key")})
    with pytest.raises(KeyConfigError, match="40"):
        ClientKeys.from_env({"RAIL_CURVE_SERVER_KEY": "short",
                             "RAIL_CURVE_KEY_FILE": str(tmp_path / "c.key_secret")})
    keys = ClientKeys.from_env({"RAIL_CURVE_SERVER_KEY": str(tmp_path / "b.key"),
                                "RAIL_CURVE_KEY_FILE": str(tmp_path / "c.key_secret")})
    assert keys is not None
    assert keys.server_public == zmq.auth.load_certificate(str(tmp_path / "b.key"))[0]


def test_rail_with_half_the_key_variables_says_so_in_one_line(tmp_path: Path) -> None:
    rail("keys", "new", "c", "--dir", str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "topics", "list"], check=False,
                          env={**python_env(),
                               "RAIL_CURVE_KEY_FILE": str(tmp_path / "c.key_secret")},
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 78
    assert done.stderr.strip().splitlines() == [
        ("rail: RAIL_CURVE_SERVER_KEY is not set but RAIL_CURVE_KEY_FILE is: a CURVE client "
         "needs both (docs/security.md)")]
