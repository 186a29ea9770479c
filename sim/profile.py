"""How a simulated vLLM server behaves: latency, length, faults and writing style."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

STYLES = ("concise", "friendly", "formal", "verbose")


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
    # Streams that start fine and then lose their connection, drawn apart from error_rate.
    midstream_error_rate: float = Field(0.0, ge=0, le=1)
    # vLLM's --max-num-seqs: requests beyond it wait for a slot before their ttft starts.
    max_num_seqs: int = Field(256, ge=1)
    max_model_len: int = Field(8192, ge=16)
    # Token capacity behind vllm:kv_cache_usage_perc.
    kv_cache_tokens: int = Field(262144, ge=1)
    # Relative spread of ttft, itl and output length, drawn from the request's seed.
    jitter: float = Field(0.1, ge=0, le=0.9)
    # /pooling as a reward model: term -> weight added per occurrence (sim/reward.py).
    reward_terms: dict[str, float] = Field(default_factory=dict)
    # As a pairwise judge: added to the reward of the answer shown first (a position bias).
    judge_position_bias: float = 0.0

    @field_validator("style")
    @classmethod
    def _known_style(cls, style: str) -> str:
        if style not in STYLES:
            raise ValueError(f"style {style!r} is not one of {', '.join(STYLES)}")
        return style
