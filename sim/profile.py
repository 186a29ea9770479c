"""How a simulated vLLM server behaves: latency, length, faults and writing style."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SimProfile(BaseModel):
    """Knobs of one simulated policy version; all times in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    style: str = "concise"
    ttft: float = Field(0.05, ge=0)
    itl: float = Field(0.01, ge=0)
    output_tokens: int = Field(48, ge=1)
    error_rate: float = Field(0.0, ge=0, le=1)
    stall_rate: float = Field(0.0, ge=0, le=1)
    seed: int = 0
