"""Where flags come from (the routing issue fills this in)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FlagsConfig(BaseModel):
    """Flag store settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
