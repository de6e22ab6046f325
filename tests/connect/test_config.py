"""rail.toml's [[connectors]] become supervised workers running the connect task script;
a bad entry is one clear line naming the key."""

from __future__ import annotations

import json
import os

import pytest

from runtime.config import ConfigError, load_config
from runtime.connect.settings import TASK_SCRIPT, env_name

GOOD = """
[workers.pizza]
script = "pizza.py"
topics = ["orders"]

[[connectors]]
name = "orders-in"
kind = "source"
class = "file"
topics = ["orders"]
tasks = 1
errors.tolerance = "all"
config = {path = "orders.jsonl"}
"""


def test_a_connector_entry_becomes_a_worker_running_the_task_script(tmp_path):
    (tmp_path / "pizza.py").write_text("def handle(event, ctx):\n    pass\n")
    (tmp_path / "rail.toml").write_text(GOOD)
    config, _ = load_config(tmp_path / "rail.toml")
    spec = config.workers["orders-in"]
    assert (spec.script, spec.topics, spec.group, spec.replicas) == (
        TASK_SCRIPT, ["orders"], "connect-orders-in", 1)
    entry = json.loads(os.environ[env_name("orders-in")])
    assert entry["config"] == {"path": "orders.jsonl"} and entry["errors"]["tolerance"] == "all"
    assert "pizza" in config.workers


@pytest.mark.parametrize(("body", "message"), [
    ('name = "x"\nkind = "source"\nclass = "file"\ntopics = []', "length >= 1"),
    ('name = "x"\nkind = "pipe"\nclass = "file"\ntopics = ["t"]', "kind"),
    ('name = "x"\nkind = "sink"\nclass = "jsonl"\ntopics = ["t"]\nconverter = "xml"',
     "unknown converter 'xml'"),
    (('name = "x"\nkind = "sink"\nclass = "jsonl"\ntopics = ["t"]\n'
     'transforms = [{type = "shout"}]'), "transforms[0]: type must be one of"),
])
def test_a_bad_connector_entry_is_a_config_error_naming_the_key(tmp_path, body, message):
    (tmp_path / "rail.toml").write_text(f"[[connectors]]\n{body}\n")
    with pytest.raises(ConfigError, match=r"connectors\.") as caught:
        load_config(tmp_path / "rail.toml")
    assert message in str(caught.value)


def test_a_connector_with_an_unusable_config_exits_with_the_config_code(broker, tmp_path):
    """Exit 78 (EXIT_CONFIG), so the supervisor does not restart it in a loop."""
    from brokerd.protocol import EXIT_CONFIG
    from tests.connect.tasks import Task

    entry = {"name": "no-path", "kind": "source", "class": "file", "topics": ["t"]}
    task = Task(entry, broker.api, tmp_path / "task.log")
    try:
        assert task.proc.wait(20) == EXIT_CONFIG
    finally:
        task.stop()
    assert "config.path: the file to read is required" in task.log()
