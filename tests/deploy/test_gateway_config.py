"""The config files the chart and compose hand the gateway load with the gateway's Settings."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from gateway.settings import Settings
from router.stores.flagfile import parse_flags
from tests.deploy.manifests import DEPLOY, EXAMPLES, find, load_values, objects, render

# Keys this deployment sets ahead of the code that reads them: dropped only while the
# settings model does not declare them yet, then checked like every other key.
PENDING = {("server", "drain_seconds")}
SECRET_ENV = {
    "LOOPGATE_IDS__KEYS": json.dumps(["k" * 32, "old-" + "k" * 28]),
    "LOOPGATE_FLAGS__ADMIN_TOKEN": "admin-token",
}


def declared(model: type[BaseModel], path: tuple[str, ...]) -> bool:
    """Whether the settings model has a field at this dotted path."""
    for part in path[:-1]:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return True
        model = annotation
    return path[-1] in model.model_fields


def without_pending(config: dict[str, Any]) -> dict[str, Any]:
    """The config less the pending keys the settings do not declare yet."""
    for path in PENDING:
        if not declared(Settings, path):
            section = config
            for part in path[:-1]:
                section = section.get(part, {})
            section.pop(path[-1], None)
    return config


def chart_config(values_file: str | None) -> dict[str, Any]:
    """config.yaml as the chart renders it."""
    values = load_values(EXAMPLES / values_file) if values_file else None
    configmap = find(objects(render(values)), "ConfigMap", "lg-loopgate-config")
    data: dict[str, Any] = yaml.safe_load(configmap["data"]["config.yaml"])
    return data


@pytest.mark.parametrize("values_file", [None, *sorted(p.name for p in EXAMPLES.glob("*.yaml"))])
def test_chart_config_loads(values_file: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings(**without_pending(chart_config(values_file)))
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 8080
    # The environment (from Secrets) wins over the file; the key list keeps its order.
    assert [k.get_secret_value() for k in settings.ids.keys] == json.loads(
        SECRET_ENV["LOOPGATE_IDS__KEYS"]
    )
    assert settings.flags.admin_token == "admin-token"
    assert str(settings.events.spool.dir) == "/var/lib/loopgate/var/spool"


def test_multi_version_config_routes_to_redis_and_kafka() -> None:
    settings = Settings(**without_pending(chart_config("multi-version.yaml")))
    assert settings.flags.source == "redis"
    assert settings.flags.seed_from_file
    assert settings.events.kafka is not None
    assert settings.ids.require_keys


def test_compose_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    raw = yaml.safe_load((DEPLOY / "config/compose-gateway.yaml").read_text())
    settings = Settings(**without_pending(raw))
    assert set(settings.pools) == {"policy-a", "policy-b"}
    assert settings.events.kafka is not None
    assert settings.events.kafka.bootstrap_servers == ["kafka:9092"]


def test_shipped_flag_files_parse_against_their_pools() -> None:
    compose = yaml.safe_load((DEPLOY / "config/compose-gateway.yaml").read_text())
    text = (DEPLOY / "config/flags.yaml").read_text()
    assert parse_flags(text, set(compose["pools"]), "deploy/config/flags.yaml")
    for example in sorted(EXAMPLES.glob("*.yaml")):
        rendered = objects(render(load_values(example)))
        configmap = find(rendered, "ConfigMap", "lg-loopgate-config")["data"]
        pools = yaml.safe_load(configmap["config.yaml"])["pools"]
        assert parse_flags(configmap["flags.yaml"], set(pools), f"{example.name} flags.yaml")


def test_evaluators_in_values_reach_the_gateway_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    values = {
        "externalPools": {
            "judge": {"endpoints": ["http://judge.models:8000"], "servedModel": "judge-7b"}
        },
        "evaluators": {
            "helpfulness": {"kind": "judge", "pool": "judge", "sample_rate": 0.05, "pairs": True},
            "reward": {"kind": "reward_model", "pool": "v1"},
        },
    }
    configmap = find(objects(render(values)), "ConfigMap", "lg-loopgate-config")
    settings = Settings(**without_pending(yaml.safe_load(configmap["data"]["config.yaml"])))
    assert set(settings.evaluators) == {"helpfulness", "reward"}
    assert settings.evaluators["helpfulness"].pairs
    assert settings.evaluators["helpfulness"].sample_rate == 0.05
    assert not settings.evaluators["reward"].pairs
    # None by default.
    assert "evaluators" not in chart_config(None)
