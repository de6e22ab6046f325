"""rail.toml's worker settings of the worker host: concurrency, drain, quarantine."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ConfigError, load_config


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "w.py").write_text("def handle(event, ctx):\n    pass\n")
    path = tmp_path / "rail.toml"
    path.write_text('[workers.w]\nscript = "w.py"\ntopics = ["t"]\n' + body)
    return path


def test_defaults_and_values(tmp_path: Path) -> None:
    spec = load_config(write(tmp_path, ""))[0].workers["w"]
    assert (spec.concurrency, spec.drain_timeout_s, spec.quarantine_after) == (1, 30.0, 3)
    spec = load_config(write(tmp_path, "concurrency = 50\ndrain_timeout_s = 5\n"
                             "quarantine_after = 0\n"))[0].workers["w"]
    assert (spec.concurrency, spec.drain_timeout_s, spec.quarantine_after) == (50, 5.0, 0)


def test_a_bad_concurrency_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"workers\.w\.concurrency"):
        load_config(write(tmp_path, "concurrency = 0\n"))


def test_supervisor_delays_switch(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_config(path)[0].supervisor.delays is False
    path.write_text("[supervisor]\ndelays = true\n" + path.read_text())
    assert load_config(path)[0].supervisor.delays is True


def test_rate_is_n_per_second_minute_or_hour(tmp_path: Path) -> None:
    from runtime.worker.rate import per_second

    spec = load_config(write(tmp_path, 'rate = "600/m"\n'))[0].workers["w"]
    assert per_second(spec.rate) == 10.0
    for bad in ("0/s", "fast", "10/d"):
        with pytest.raises(ConfigError, match=r"workers\.w\.rate"):
            load_config(write(tmp_path, f'rate = "{bad}"\n'))


def test_handler_timeout_action(tmp_path: Path) -> None:
    spec = load_config(write(tmp_path, ""))[0].workers["w"]
    assert spec.handler_timeout_action == "recycle"
    with pytest.raises(ConfigError, match=r"workers\.w\.handler_timeout_action"):
        load_config(write(tmp_path, 'handler_timeout_action = "ignore"\n'))


def test_key_rate(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'key_rate = "5/s"\n'))[0].workers["w"].key_rate == "5/s"
    with pytest.raises(ConfigError, match=r"workers\.w\.key_rate"):
        load_config(write(tmp_path, 'key_rate = "5"\n'))
