"""Prometheus rules: promtool checks them and runs their unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.observability.promql import metric_names

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy/prometheus/rules"
HERE = Path(__file__).parent

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing (scripts/test installs it)"
)


def _promtool(*args: str) -> str:
    done = subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, cwd=HERE, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    files = sorted(str(p) for p in RULES.glob("*.yml"))
    assert files
    assert "SUCCESS" in _promtool("check", "rules", *files)


@needs_promtool
def test_promtool_unit_tests_of_the_alerts() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "rules_test.yml")


def test_metric_names_parser() -> None:
    expr = (
        'sum by (flag, variant) (rate(loopgate_requests_total{status=~"5.."}[5m]))'
        " / on (flag) group_left () loopgate:requests:rate5m and time() > 3"
    )
    assert metric_names(expr) == {"loopgate_requests_total", "loopgate:requests:rate5m"}
