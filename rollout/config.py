"""The `experiments` settings section: counters, plan store and the in-process controller."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from rollout.plan import RolloutPlan


class ControllerConfig(BaseModel):
    """The rollout controller (in the gateway process, or `loopgate controller`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Run the controller inside the gateway (the embedded default; one gateway process only).
    # With Redis and several replicas, run `loopgate controller` instead.
    in_process: bool = False
    interval_s: float = Field(30.0, gt=0)
    # Leadership lock expiry; renewed every third of it.
    lock_ttl_s: float = Field(15.0, gt=0)


class ExperimentsConfig(BaseModel):
    """Experiment counters and rollout plans."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Counters and plans in Redis, shared by replicas and the controller; None: this process.
    redis_url: str | None = None
    namespace: str = Field("loopgate", pattern=r"^[A-Za-z0-9._-]+$")
    # Pending increments go to the backend this often (off the request path).
    flush_interval_s: float = Field(1.0, gt=0)
    # Redis counters expire this long after their last write.
    ttl_s: float = Field(90 * 24 * 3600, gt=0)
    # In memory: distinct units remembered per arm (beyond it the count is a lower bound).
    max_units_per_arm: int = Field(50_000, ge=0)
    # Without Redis: plans and controller state in this JSON file (None: memory).
    plans_path: Path | None = None
    # Plans put into the store at start when it has none for the flag.
    plans: list[RolloutPlan] = Field(default_factory=list)
    controller: ControllerConfig = ControllerConfig()
