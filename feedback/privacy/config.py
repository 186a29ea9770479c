"""Erasure settings: which key store holds the per-unit content keys, and how long caches hold."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PrivacyConfig(BaseModel):
    """Content sealing (crypto-shredding): on by default, keys in files next to the spool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Encrypt the content fields of completion and feedback events with a key per unit.
    seal: bool = True
    # file: one machine (the embedded default); redis: every replica shares the keys.
    store: Literal["file", "redis"] = "file"
    # File store directory; unset: `keys` next to the spool directory (var/keys by default).
    dir: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "loopgate"
    # Keys held in memory by a writer or reader: bounded, and each entry expires, so a
    # forget that missed the Redis broadcast (or a file store's other workers) takes
    # effect within cache_ttl_s. It must hold a batch's units (4 x events.batch_max).
    cache_size: int = Field(100_000, ge=4096)
    cache_ttl_s: float = Field(60.0, gt=0)
    # A key store that failed is not asked again for this long: meanwhile the content of
    # units whose keys are not cached is withheld (metadata still goes out).
    retry_after_s: float = Field(5.0, gt=0)


def key_dir(config: PrivacyConfig, spool_dir: Path) -> Path:
    """Where the file store keeps keys: `dir`, else `keys` beside the spool directory."""
    return config.dir if config.dir is not None else spool_dir.parent / "keys"
