"""Settings: one YAML file plus LOOPGATE_* environment overrides, checked at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from console.config import ConsoleConfig
from feedback.config import EventsConfig, IdsConfig
from gateway.config import (
    AuthConfig,
    BalancerConfig,
    EvaluatorConfig,
    FeedbackApiConfig,
    LimitsConfig,
    ModelRoute,
    PoolConfig,
    RateLimitConfig,
    ServerConfig,
    TelemetryConfig,
)
from rollout.config import ExperimentsConfig
from router.config import FlagsConfig

DEFAULT_CONFIG = Path(__file__).with_name("defaults.yaml")


class OtelEnvSource(PydanticBaseSettingsSource):
    """OTEL_TRACES_EXPORTER as `telemetry.tracing.exporter`, OTEL_METRICS_EXPORTER=none as
    `telemetry.tracing.metrics: false` (the SDK reads the other OTEL_*)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: dict[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: __call__ builds the whole mapping."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        disabled = self.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        exporter = self.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        if disabled:
            exporter = "none"
        tracing: dict[str, Any] = {}
        if exporter:
            # The SDK takes a comma list; the gateway runs one exporter (the first).
            tracing["exporter"] = exporter.split(",")[0].strip()
        if self.environ.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "none":
            tracing["metrics"] = False
        return {"telemetry": {"tracing": tracing}} if tracing else {}


class Settings(BaseSettings):
    """Everything the gateway needs, validated before it serves."""

    model_config = SettingsConfigDict(
        env_prefix="LOOPGATE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    instance: str = "loopgate"
    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    pools: dict[str, PoolConfig] = Field(default_factory=dict)
    models: dict[str, ModelRoute] = Field(default_factory=dict)
    flags: FlagsConfig = FlagsConfig()
    events: EventsConfig = EventsConfig()
    ids: IdsConfig = IdsConfig()
    feedback: FeedbackApiConfig = FeedbackApiConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    auth: AuthConfig = AuthConfig()
    ratelimit: RateLimitConfig = RateLimitConfig()
    balancer: BalancerConfig = BalancerConfig()
    console: ConsoleConfig = ConsoleConfig()
    evaluators: dict[str, EvaluatorConfig] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it. OTEL_TRACES_EXPORTER
        # (the standard switch) overrides the YAML; LOOPGATE_TELEMETRY__* overrides both.
        otel = OtelEnvSource(settings_cls, dict(os.environ))
        return env_settings, otel, init_settings, file_secret_settings

    @model_validator(mode="after")
    def _models_name_known_pools(self) -> Settings:
        for name, route in self.models.items():
            if route.pool not in self.pools:
                known = ", ".join(sorted(self.pools)) or "none"
                raise ValueError(
                    f"models.{name}.pool: unknown pool {route.pool!r} (known pools: {known})"
                )
        for name, evaluator in self.evaluators.items():
            if evaluator.pool not in self.pools:
                known = ", ".join(sorted(self.pools)) or "none"
                raise ValueError(
                    f"evaluators.{name}.pool: unknown pool {evaluator.pool!r}"
                    f" (known pools: {known})"
                )
        return self


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and why."""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration (file {source}, with LOOPGATE_* environment overrides):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (the embedded defaults when none is given), apply env, validate."""
    source = path or DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {source}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration {source} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"configuration {source} must be a mapping at the top level")
    raw.update(overrides)
    try:
        return Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(source))) from exc
