"""The telemetry section: OTEL_TRACES_EXPORTER read through Settings, tracing off by default."""

from __future__ import annotations

import pytest

from gateway.config import SafetyConfig, TracingConfig
from gateway.settings import Settings
from gateway.tracing import open_tracing, openfeature_reason


def test_tracing_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    settings = Settings()
    assert not settings.telemetry.tracing.enabled
    assert open_tracing(settings.telemetry.tracing, "test") is None


@pytest.mark.parametrize(
    ("env", "exporter"),
    [({"OTEL_TRACES_EXPORTER": "console"}, "console"),
     ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "otlp"),
     ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, "none"),
     ({"OTEL_TRACES_EXPORTER": "none"}, "none")],
)  # fmt: skip
def test_otel_traces_exporter(
    env: dict[str, str], exporter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(telemetry={"drift": {"window": 100}})  # merged with the YAML section
    assert settings.telemetry.tracing.exporter == exporter
    assert settings.telemetry.drift.window == 100


def test_console_exporter_makes_a_provider() -> None:
    tracing = open_tracing(TracingConfig(exporter="console"), "test")
    assert tracing is not None
    tracing.shutdown()


def test_keyword_categories_are_checked() -> None:
    with pytest.raises(ValueError, match="lower_snake_case"):
        SafetyConfig(keywords={"Bad Name": ["x"]})


def test_otel_metrics_exporter_none_turns_the_genai_metrics_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    config = Settings().telemetry.tracing
    assert (config.exporter, config.metrics) == ("console", False)
    tracing = open_tracing(config, "test")
    assert tracing is not None
    assert tracing.meters is None
    tracing.shutdown()
    monkeypatch.delenv("OTEL_METRICS_EXPORTER")
    tracing = open_tracing(Settings().telemetry.tracing, "test")
    assert tracing is not None
    assert tracing.meters is not None
    tracing.shutdown()


@pytest.mark.parametrize(
    ("reason", "openfeature"),
    [("split", "split"), ("static", "static"), ("disabled", "disabled"),
     ("kill_switch", "disabled"), ("fallback", "error"), ("qa_override", "targeting_match"),
     ("attr_equals", "targeting_match"), ("deny_apps", "targeting_match")],
)  # fmt: skip
def test_router_reasons_map_to_openfeature(reason: str, openfeature: str) -> None:
    """As docs/routing.md's table says (a disabled flag is `disabled`, not a targeting match)."""
    assert openfeature_reason(reason) == openfeature
