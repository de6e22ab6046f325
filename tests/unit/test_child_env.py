"""What the supervisor's children inherit: its environment, without its own secrets."""

from __future__ import annotations

import pytest

from runtime.process import child_env


def test_children_do_not_inherit_the_console_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAIL_CONSOLE_TOKEN", "s3cret")
    monkeypatch.setenv("RAIL_CURVE_KEY_FILE", "keys/w.key_secret")
    env = child_env({"EXTRA": "1"})
    assert "RAIL_CONSOLE_TOKEN" not in env
    assert env["RAIL_CURVE_KEY_FILE"] == "keys/w.key_secret"  # a client key workers use
    assert env["EXTRA"] == "1" and env["PYTHONUNBUFFERED"] == "1"
