"""docs/alerts.yml and docs/grafana-dashboard.json: valid, and written against metric names
the broker and the supervisor really serve.  With promtool (Debian's ``prometheus``
package, or PROMTOOL=path) the rules are also checked and unit-tested by Prometheus itself;
without it those two tests skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCS = ROOT / "docs"
HERE = Path(__file__).resolve().parent
SERVED = {path: (ROOT / path).read_text() for path in ("brokerd/metrics.py", "runtime/metrics.py")}
_NAME = re.compile(r"\b(rail_[a-z_]+)")


def promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return found


def dashboard_exprs() -> list[str]:
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text())
    return [t["expr"] for panel in dash["panels"] for t in panel.get("targets", [])]


def served(name: str) -> bool:
    """A metric name (with prometheus_client's _total for counters, _bucket for histograms)
    the code serves: named whole, or a broker counter made as f"rail_broker_{name}" from its
    short name."""
    base = name.removesuffix("_total").removesuffix("_bucket")  # a histogram's buckets
    short = base.removeprefix("rail_broker_")
    return any(f'"{base}"' in text or (short != base and f'"{short}"' in text
                                       and 'f"rail_broker_{name}"' in text)
               for text in SERVED.values())


def test_every_metric_in_the_dashboard_and_the_alerts_is_served() -> None:
    text = (DOCS / "alerts.yml").read_text() + "\n".join(dashboard_exprs())
    names = set(_NAME.findall(text))
    assert len(names) > 15
    assert sorted(n for n in names if not served(n)) == []
    assert not served("rail_broker_no_such_thing_total")


def test_the_dashboard_is_grafana_json_with_a_query_in_every_panel() -> None:
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text())
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    for panel in dash["panels"]:
        assert panel["type"] == "row" or panel["targets"], panel["title"]


def test_the_alert_rules_pass_promtool_and_fire_when_they_should(tmp_path: Path) -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(DOCS / "alerts.yml")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=HERE,
                          capture_output=True, text=True, timeout=60, check=False)
    assert test.returncode == 0, test.stdout + test.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    tool = promtool()
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(
        f"      - record: dashboard_query_{i}\n        expr: {json.dumps(expr)}\n"
        for i, expr in enumerate(dashboard_exprs())))
    check = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
