"""values.schema.json and the chart's own checks refuse broken values at install time."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import jsonschema
import pytest

from tests.deploy.manifests import CHART, EXAMPLES, chart, load_values, render

BROKEN: dict[str, dict[str, Any]] = {
    "unknown top-level key": {"replicaCount": 3},
    "typo in gateway": {"gateway": {"replicaz": 3}},
    "drain as a string": {"gateway": {"drainSeconds": "30"}},
    "port out of range": {"gateway": {"port": 70000}},
    "bad service type": {"gateway": {"service": {"type": "Ingress"}}},
    "version without model": {"policyVersions": [{"name": "v2"}]},
    "version name not a DNS label": {"policyVersions": [{"name": "V_2", "model": "m"}]},
    "unknown version key": {"policyVersions": [{"name": "v2", "model": "m", "gpu": 1}]},
    "zero gpus": {"policyVersions": [{"name": "v2", "model": "m", "gpus": 0}]},
    "adapter without path": {
        "policyVersions": [{"name": "v2", "model": "m", "adapters": [{"name": "a"}]}]
    },
    "model route without pool": {"models": {"chat": {"description": "x"}}},
    "evaluator without pool": {"evaluators": {"judge": {"kind": "judge"}}},
    "evaluator of an unknown kind": {"evaluators": {"judge": {"kind": "vibes", "pool": "v1"}}},
    "pairs not a boolean": {
        "evaluators": {"judge": {"kind": "judge", "pool": "v1", "pairs": "yes"}}
    },
    "redis url not redis": {"redis": {"url": "http://redis:6379"}},
    "kafka server without port": {"kafka": {"bootstrapServers": ["kafka"]}},
    "secret env not LOOPGATE_": {
        "secrets": {"signingKeys": {"secretName": "s", "key": "k", "env": "KEYS"}}
    },
    "secret value inline": {"secrets": {"signingKeys": {"value": "hunter2"}}},
    "bad scrape interval": {"monitoring": {"serviceMonitor": {"interval": "often"}}},
    "bad quantity": {"gateway": {"spool": {"sizeLimit": "lots"}}},
}

REFUSED_BY_TEMPLATES: dict[str, tuple[dict[str, Any], str]] = {
    "model on unknown pool": ({"models": {"chat": {"pool": "nope"}}}, "unknown pool"),
    "evaluator on unknown pool": (
        {"evaluators": {"judge": {"kind": "judge", "pool": "nope"}}},
        "evaluators.judge.pool: unknown pool",
    ),
    "grace period too short": (
        {"gateway": {"terminationGracePeriodSeconds": 20, "drainSeconds": 30}},
        "must exceed",
    ),
    "controller without redis": ({"controller": {"enabled": True}}, "needs Redis"),
    "version listed twice": (
        {"policyVersions": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]},
        "listed twice",
    ),
    "min above max replicas": (
        {"gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
        "minReplicas",
    ),
}


def test_schema_is_valid_draft7() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", [CHART / "values.yaml", *sorted(EXAMPLES.glob("*.yaml"))])
def test_shipped_values_pass_the_schema(path: Any) -> None:
    with chart() as loaded:
        loaded.validate_schema(load_values(path))


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_helm_refuses_broken_values(case: str) -> None:
    with pytest.raises(helm.HelmValuesError, match="schema"):
        render(BROKEN[case])


@pytest.mark.parametrize("case", sorted(REFUSED_BY_TEMPLATES))
def test_templates_refuse_inconsistent_values(case: str) -> None:
    values, message = REFUSED_BY_TEMPLATES[case]
    with pytest.raises(helm.HelmRenderError, match=message):
        render(values)
