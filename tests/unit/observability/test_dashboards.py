"""Dashboards and rules: what they query, how they name their datasource, and that it parses.

That every series they query has samples after traffic is test_series.py's (a real
Prometheus scraping a real gateway). Each query here must parse: promtool checks it as a
recording rule.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.observability.promql import grafana_to_promql, label_values_selector, metric_names

ROOT = Path(__file__).resolve().parents[3]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
RULES = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _datasources(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from _datasources(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasources(value)


def panel_exprs() -> list[tuple[str, str, str]]:
    """(file, title, PromQL) of every panel target, annotation and variable query."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                out.append((path.name, panel["title"], target["expr"]))
        for annotation in board.get("annotations", {}).get("list", []):
            out.append((path.name, f"annotation {annotation['name']}", annotation["expr"]))
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]["query"]
                out.append((path.name, f"${variable['name']}", label_values_selector(query)))
    return out


def rule_exprs() -> list[tuple[str, str, str]]:
    """(file, rule name, PromQL) of every recording and alerting rule."""
    out = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((path.name, rule.get("record") or rule["alert"], rule["expr"]))
    return out


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_use_the_datasource_variable(path: Path) -> None:
    """No hard-coded uid: the board works with whatever Prometheus datasource Grafana has."""
    board = json.loads(path.read_text())
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    used = list(_datasources({k: v for k, v in board.items() if k != "templating"}))
    used += [v["datasource"] for v in board["templating"]["list"] if v["type"] == "query"]
    assert used
    assert all(d == DATASOURCE for d in used), {json.dumps(d) for d in used} - {
        json.dumps(DATASOURCE)
    }


def test_every_query_names_a_metric() -> None:
    for source, title, expr in panel_exprs() + rule_exprs():
        assert metric_names(grafana_to_promql(expr)), (source, title, expr)


def test_the_dashboards_cover_the_signals() -> None:
    used = set().union(*(metric_names(grafana_to_promql(e)) for _, _, e in panel_exprs()))
    for name in (
        "loopgate_requests_total", "loopgate_time_to_first_token_seconds_bucket",
        "loopgate_feedback_total", "loopgate:feedback_thumbs_up:share1h",
        "loopgate_safety_findings_total", "loopgate_safety_reports_total", "loopgate_drift_psi",
        "loopgate_events_dropped_total", "loopgate_upstream_endpoint_healthy",
        "loopgate_overhead_seconds_bucket", "loopgate_rollout_canary_share",
        "loopgate_rollout_decisions_total", "loopgate_rollout_actions_total",
        "loopgate_controller_leader", "loopgate_rollout_status",
    ):  # fmt: skip
        assert name in used, name


def test_rollout_actions_are_annotated() -> None:
    board = json.loads((ROOT / "deploy/grafana/dashboards/loopgate-rollouts.json").read_text())
    exprs = [a["expr"] for a in board["annotations"]["list"] if a["enable"]]
    for action in ("advance", "promote", "rollback"):
        assert any(f'action="{action}"' in e for e in exprs), action


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")
def test_every_panel_query_parses(tmp_path: Path) -> None:
    rules = [
        {"record": f"panel:check:{i}", "expr": grafana_to_promql(expr)}
        for i, (_, _, expr) in enumerate(panel_exprs())
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    done = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
