"""Settings: one YAML file plus LOOPGATE_* environment overrides, checked at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from console.config import ConsoleConfig
from feedback.config import EventsConfig, IdsConfig
from gateway.auth import AuthConfig
from gateway.balancer import BalancerConfig
from gateway.evaluator_config import EvaluatorConfig
from gateway.ratelimit import RateLimitConfig
from gateway.telemetry_config import OtelEnvSource, TelemetryConfig
from rollout.config import ExperimentsConfig
from router.config import FlagsConfig
from sim.profile import SimProfile

DEFAULT_CONFIG = Path(__file__).with_name("defaults.yaml")


class Strict(BaseModel):
    """Config sections refuse unknown keys so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(Strict):
    """Upstream timeouts in seconds."""

    connect: float = Field(2.0, gt=0)
    first_byte: float = Field(60.0, gt=0)
    total: float = Field(600.0, gt=0)


class PoolConfig(Strict):
    """One upstream pool: OpenAI-compatible endpoints serving the same model."""

    endpoints: list[str] = Field(min_length=1)
    served_model: str = Field(min_length=1)
    api_key: SecretStr | None = None
    timeouts: Timeouts = Timeouts()
    sim: SimProfile | None = None

    @field_validator("endpoints")
    @classmethod
    def _http_urls(cls, endpoints: list[str]) -> list[str]:
        for url in endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must start with http:// or https://")
        return [url.rstrip("/") for url in endpoints]


class ModelRoute(Strict):
    """A model name apps may ask for, served by one pool (flags may route it instead)."""

    pool: str
    served_model: str | None = None
    description: str = ""


class ServerConfig(Strict):
    """Where `loopgate serve` listens."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    # On SIGTERM: how long in-flight requests and streams may take to finish.
    drain_seconds: float = Field(30.0, gt=0)
    # Set by `serve --workers N` (not by hand): a file whose presence makes /readyz answer 503.
    drain_flag: Path | None = None
    # On SIGTERM, /readyz answers 503 and requests are still served this long before the
    # listener closes, so load balancers stop sending first (set it to their probe period).
    unready_seconds: float = Field(0.0, ge=0)
    # Behind a load balancer: take the client address for access logs from X-Forwarded-For
    # sent by these addresses. Off by default: nothing on the request path reads it, and
    # uvicorn's middleware for it costs every request.
    proxy_headers: bool = False
    forwarded_allow_ips: str = "127.0.0.1"
    # Python's garbage collector thresholds (gc.set_threshold) while serving: a young
    # collection per 10,000 allocations rather than 700 (measured in bench_gateway).
    gc_thresholds: tuple[int, int, int] = (10_000, 20, 20)

    @field_validator("gc_thresholds")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if value[0] < 1 or value[1] < 1 or value[2] < 1:
            raise ValueError("gc thresholds must be positive (0 would turn collection off)")
        return value


class LimitsConfig(Strict):
    """Request limits enforced before anything reaches an upstream (docs/hardening.md)."""

    # Request bodies per route, counted while they stream in (413 once over). max_body_bytes
    # is chat's and completions' limit and the ceiling of the others.
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    feedback_body_bytes: int = Field(256 * 1024, gt=0)  # /v1/feedback
    feedback_batch_body_bytes: int = Field(4 * 1024 * 1024, gt=0)  # /v1/feedback/batch
    admin_body_bytes: int = Field(1024 * 1024, gt=0)  # /admin/*
    other_body_bytes: int = Field(64 * 1024, gt=0)  # every other route
    # The request line and headers together (431 once over).
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    # A client must send its whole request head within this many seconds of starting it (408),
    # and may pause at most this long between pieces of its body (408): slow clients go.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    # Open connections per client address (None: no cap; behind a load balancer every
    # connection comes from its few addresses, so set this only where clients connect directly).
    max_connections_per_client: int | None = Field(None, gt=0)
    # Chat messages per request (vLLM has no limit of its own; a huge array is an attack).
    max_messages: int = Field(2048, gt=0)
    # `n` and `best_of` per request (OpenAI's own cap is 128); n x max_tokens counts against
    # a key's max_tokens ceiling and the tokens-per-minute estimate either way.
    max_n: int = Field(128, ge=1)


class FeedbackApiConfig(Strict):
    """How /v1/feedback accepts judgements of answers."""

    # Idempotency keys are remembered this long; a repeat within it is not recorded again.
    idempotency_ttl_s: float = Field(24 * 3600, gt=0)
    idempotency_max_keys: int = Field(100_000, ge=1)
    # Share idempotency keys across replicas through Redis (None: this process only).
    redis_url: str | None = None
    namespace: str = "loopgate"
    max_batch: int = Field(100, ge=1, le=1000)


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
