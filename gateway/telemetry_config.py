"""The `telemetry` settings section: tracing, the safety check, drift, multiprocess metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource


class _Strict(BaseModel):
    """Config sections refuse unknown keys so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TracingConfig(_Strict):
    """OpenTelemetry traces; the exporter's endpoint, headers and batching come from OTEL_*."""

    # None, or `none`: off (no TracerProvider, no span cost on the request path).
    # Set from OTEL_TRACES_EXPORTER when the YAML does not say.
    exporter: Literal["none", "otlp", "console"] | None = None
    # Response id -> answer span context, for feedback spans on the answer's trace.
    answer_spans_max: int = Field(10_000, ge=0)
    # The GenAI metrics (token usage, time to first token) through the same exporter.
    # Set from OTEL_METRICS_EXPORTER=none when the YAML does not say.
    metrics: bool = True

    @property
    def enabled(self) -> bool:
        """True when spans are made and exported."""
        return self.exporter not in (None, "none")


class ClassifierConfig(_Strict):
    """An external safety classifier, called off the request path with a bounded queue."""

    # "module:attribute" of a factory taking this config and returning a SafetyClassifier.
    factory: str
    queue_size: int = Field(1000, ge=1)
    timeout_s: float = Field(2.0, gt=0)
    concurrency: int = Field(4, ge=1)
    # Categories it may report; anything else is counted as `other` (bounded labels).
    categories: list[str] = Field(default_factory=lambda: ["jailbreak", "self_harm", "toxicity"])
    options: dict[str, Any] = Field(default_factory=dict)


class SafetyConfig(_Strict):
    """The built-in rule set on prompts and answers, plus extra policy keywords."""

    enabled: bool = True
    # category -> words or phrases (matched whole, case-insensitive).
    keywords: dict[str, list[str]] = Field(default_factory=dict)
    # Only the first characters of a text are checked; bounds the cost of huge prompts.
    max_chars: int = Field(8_000, ge=1)
    classifier: ClassifierConfig | None = None

    @field_validator("keywords")
    @classmethod
    def _categories(cls, keywords: dict[str, list[str]]) -> dict[str, list[str]]:
        for category in keywords:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", category):
                raise ValueError(f"category {category!r} must be lower_snake_case")
        return keywords


class DriftConfig(_Strict):
    """Rolling profiles per flag/variant compared with a frozen baseline (PSI)."""

    enabled: bool = True
    window: int = Field(2000, ge=10)  # the last N answers per flag/variant
    min_samples: int = Field(200, ge=1)  # fewer in the window or baseline: no gauge
    interval_s: float = Field(15.0, gt=0)  # how often the gauges are recomputed
    max_profiles: int = Field(256, ge=1)  # flag/variant pairs kept (least recent evicted)
    # Where the frozen baseline lives (None: memory only, or the multiprocess folder).
    baseline_path: Path | None = None


class TelemetryConfig(_Strict):
    """Observability beyond the request metrics."""

    tracing: TracingConfig = TracingConfig()
    safety: SafetyConfig = SafetyConfig()
    drift: DriftConfig = DriftConfig()
    # Set by `loopgate serve --workers N`: prometheus-client's multiprocess folder.
    multiprocess_dir: Path | None = None


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
