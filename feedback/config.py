"""Event pipeline and response id settings: the defaults run on one machine with no config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from feedback.privacy.config import PrivacyConfig


class _Strict(BaseModel):
    """Config sections refuse unknown keys so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Strict):
    """Kafka producer settings; present only when events should go to Kafka."""

    bootstrap_servers: list[str] = Field(min_length=1)
    client_id: str = "loopgate"
    compression: Literal["lz4", "zstd", "gzip", "snappy", "none"] = "lz4"
    create_topics: bool = True
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    linger_ms: int = Field(5, ge=0)
    # One batch may wait this long for acks before it is spooled instead.
    send_timeout_s: float = Field(10.0, gt=0)
    # Connecting and metadata waits; keeps a dead broker from holding the sender long.
    connect_timeout_s: float = Field(3.0, gt=0)
    retry_backoff_s: float = Field(0.5, gt=0)
    retry_backoff_max_s: float = Field(5.0, gt=0)
    # The largest record the producer sends (its max_request_size) and, for topics the
    # gateway creates, their max.message.bytes. A bigger event is cut to fit (docs/events.md).
    max_request_bytes: int = Field(1024 * 1024, ge=16 * 1024, le=32 * 1024 * 1024)
    # "process": the producer (pure-Python, CPU-heavy) runs in a child process per worker,
    # off the serving event loop's GIL; "thread": in this process, on one thread.
    producer: Literal["process", "thread"] = "process"


class SpoolConfig(_Strict):
    """The local append-only spool: the sink without Kafka, the fallback with it."""

    dir: Path = Path("var/spool")
    segment_bytes: int = Field(16 * 1024 * 1024, ge=4096)
    max_bytes: int = Field(1024 * 1024 * 1024, ge=4096)
    # Events Kafka can never take, set aside under <folder>/dead-letter (its own bound).
    dead_letter_max_bytes: int = Field(256 * 1024 * 1024, ge=4096)


class RedactionConfig(_Strict):
    """Extra patterns (category -> regex) and an allow-list of regexes never redacted."""

    enabled: bool = True
    patterns: dict[str, str] = Field(default_factory=dict)
    allow: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: dict[str, str]) -> dict[str, str]:
        for category, pattern in patterns.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", category):
                raise ValueError(f"category {category!r} must be lower_snake_case")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern for {category!r} is not a valid regex: {exc}") from exc
        return patterns

    @field_validator("allow")
    @classmethod
    def _allow_compiles(cls, allow: list[str]) -> list[str]:
        for pattern in allow:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"allow pattern {pattern!r} is not a valid regex: {exc}") from exc
        return allow


class EventsConfig(_Strict):
    """Where events go: Kafka when configured, else the spool under `spool.dir`."""

    enabled: bool = True
    kafka: KafkaConfig | None = None
    spool: SpoolConfig = SpoolConfig()
    redaction: RedactionConfig = RedactionConfig()
    # Content sealed per unit so a unit can be forgotten (docs/privacy.md).
    privacy: PrivacyConfig = PrivacyConfig()
    queue_size: int = Field(10_000, ge=1)
    # Events waiting for the spool writer once the queue overflowed or Kafka failed.
    spool_buffer: int = Field(20_000, ge=1)
    batch_max: int = Field(500, ge=1)
    # The worker waits this long for a batch to fill before a write: far fewer fsyncs and
    # thread hand-offs under load, for at most this much more time in memory.
    linger_s: float = Field(0.02, ge=0, le=1)
    # On shutdown, how long draining the queue to Kafka may take before the rest is spooled.
    drain_timeout_s: float = Field(10.0, gt=0)


class IdsConfig(_Strict):
    """Signing keys for response ids: the first signs, all verify (rotation)."""

    keys: list[SecretStr] = Field(default_factory=list)
    # Keyed hash for unit ids; kept apart from the signing keys so rotating them
    # does not change unit hashes. Derived from the first key when unset.
    unit_key: SecretStr | None = None
    # Feedback is accepted on ids up to this age.
    max_age_s: int = Field(7 * 24 * 3600, gt=0)
    # Refuse to start without configured keys (set in production); otherwise a random
    # per-process key is generated and a warning logged.
    require_keys: bool = False

    @field_validator("keys")
    @classmethod
    def _long_enough(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for index, key in enumerate(keys):
            if len(key.get_secret_value().encode()) < 32:
                raise ValueError(f"keys[{index}] must be at least 32 bytes")
        return keys
