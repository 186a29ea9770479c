"""Event pipeline and response id settings (the feedback issue fills these in)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EventsConfig(BaseModel):
    """Where events go."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IdsConfig(BaseModel):
    """Signing keys for response ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)
