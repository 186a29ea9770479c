"""Configuration: examples and defaults load; a bad key is named with its reason."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("*.yaml"))


def test_the_embedded_defaults_load() -> None:
    settings = load_settings()
    assert set(settings.models) >= {"policy-a", "policy-b"}
    assert all(pool.sim is not None for pool in settings.pools.values())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    settings = load_settings(path)
    assert settings.pools
    for route in settings.models.values():
        assert route.pool in settings.pools


def test_there_are_examples_for_sim_vllm_and_lora() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"sim-two-versions", "vllm-two-deployments", "vllm-lora"} <= names


def test_a_model_naming_an_unknown_pool_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "pools: {a: {endpoints: ['http://x:1'], served_model: m}}\nmodels: {m: {pool: b}}\n"
    )
    with pytest.raises(ConfigError, match=r"models\.m\.pool: unknown pool 'b'"):
        load_settings(path)


def test_a_typo_is_named_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pools: {a: {endpoints: ['http://x:1'], served_model: m, timeout: {}}}\n")
    with pytest.raises(ConfigError, match=r"pools\.a\.timeout: Extra inputs are not permitted"):
        load_settings(path)


def test_an_endpoint_without_scheme_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pools: {a: {endpoints: ['x:1'], served_model: m}}\n")
    with pytest.raises(ConfigError, match="must start with http"):
        load_settings(path)


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPGATE_SERVER__PORT", "9123")
    assert load_settings().server.port == 9123


def test_a_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPGATE_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings()


def test_unreadable_and_invalid_yaml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_a_pool_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPGATE_POOLS__SUPPORT_V1__API_KEY", "s3cret")
    settings = load_settings(Path(__file__).parents[3] / "examples/vllm-two-deployments.yaml")
    pool = settings.pools["support_v1"]
    assert pool.api_key is not None
    assert pool.api_key.get_secret_value() == "s3cret"
    assert pool.served_model == "support-v1"  # the file's other keys are kept
    assert "s3cret" not in repr(settings)


def test_a_zero_gc_threshold_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {gc_thresholds: [0, 10, 10]}\n")
    with pytest.raises(ConfigError, match=r"server\.gc_thresholds: .*must be positive"):
        load_settings(path)


def test_the_gateway_collects_garbage_at_its_thresholds_while_serving(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from gateway.app import create_app

    path = tmp_path / "c.yaml"
    path.write_text("server: {gc_thresholds: [12345, 11, 12]}\n")
    before = gc.get_threshold()
    with TestClient(create_app(load_settings(path))) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_threshold() == (12345, 11, 12)
    assert gc.get_threshold() == before  # given back when the app stops
