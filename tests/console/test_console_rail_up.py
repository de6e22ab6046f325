"""``rail up --console HOST:PORT`` serves the console beside the supervisor: its tree shows
the workers of that rail up, and the console stops with it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.console.browser import Process, rail
from tests.helpers import free_port, wait_for


def get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_rail_up_serves_the_console_with_its_supervision_tree(tmp_path: Path) -> None:
    (tmp_path / "quiet.py").write_text("def handle(event, ctx):\n    pass\n")
    control, port = f"tcp://127.0.0.1:{free_port()}", free_port()
    (tmp_path / "rail.toml").write_text(
        f'[broker]\ndata_dir = "data"\nbind = "tcp://127.0.0.1:{free_port()}"\n'
        f'ingest = "tcp://127.0.0.1:{free_port()}"\n'
        f'[supervisor]\ncontrol = "{control}"\ngrace_s = 3\n'
        '[workers.quiet]\nscript = "quiet.py"\ntopics = ["calm"]\n')
    up = Process(rail("up", "-c", str(tmp_path / "rail.toml"), "--console",
                      f"127.0.0.1:{port}"), tmp_path / "up.log")
    try:
        def tree() -> Any:
            assert up.proc.poll() is None, up.log.read_text()[-2000:]
            data = get(f"http://127.0.0.1:{port}/api/live/tree")
            return data if data and "quiet" in json.dumps(data) else None
        wait_for(tree, 40, 0.3, "the console's tree with the worker quiet")

        def history() -> list[Any]:
            data = get(f"http://127.0.0.1:{port}/api/groups/quiet")
            return data["lag_history"][""] if data else []
        before = wait_for(history, 30, 0.3, "a lag point of the group quiet")
    finally:
        up.stop()
    assert up.proc.returncode == 0, up.log.read_text()[-2000:]
    assert get(f"http://127.0.0.1:{port}/api/live/tree") is None, "the console outlived rail up"
    # restarted, the console shows the lag history from before (kept in the data folder)
    again = Process(rail("up", "-c", str(tmp_path / "rail.toml"), "--console",
                         f"127.0.0.1:{port}"), tmp_path / "up2.log")
    try:
        after = wait_for(history, 40, 0.3, "the console to answer again")
        assert [tuple(point) for point in after[:len(before)]] == [tuple(p) for p in before]
    finally:
        again.stop()
