"""Where flags come from: the file store (default) or Redis, and the admin token."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_FLAGS_FILE = Path(__file__).parent / "defaults" / "flags.yaml"


class FlagsConfig(BaseModel):
    """Flag store settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "none": no flags, every model is a static route (a config without a flags section).
    source: Literal["none", "file", "redis"] = "none"
    # None: the embedded router/defaults/flags.yaml, served read-only.
    path: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Keys `<ns>:flag:<key>`, channel `<ns>:flags`, counter `<ns>:flags:version`.
    namespace: str = Field("loopgate", pattern=r"^[A-Za-z0-9._-]+$")
    # Full re-read from Redis, a backstop for a missed pubsub message.
    resync_interval: float = Field(30.0, gt=0)
    # How often the file store looks at the file for changes.
    reload_interval: float = Field(1.0, gt=0)
    # Cap on the delay between Redis reconnect attempts (doubling from 0.1 s).
    reconnect_max_delay: float = Field(5.0, gt=0)
    # Redis socket timeouts: a request never waits on Redis, only the listener and writes do.
    redis_timeout: float = Field(2.0, gt=0)
    # An empty Redis (never written) is filled from `path` (or the embedded file) on start.
    seed_from_file: bool = False
    # Bearer token for /admin/flags; None disables the admin API.
    admin_token: str | None = None

    def flags_file(self) -> Path:
        """The flag file in use: `path`, or the embedded default."""
        return self.path or DEFAULT_FLAGS_FILE

    def file_is_embedded(self) -> bool:
        """True when the embedded default file is in use (it is never written)."""
        return self.path is None
