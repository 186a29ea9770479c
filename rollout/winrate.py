"""A candidate's win rate over judged pairs, with an always-valid confidence sequence (pure).

Each judged pair scores 1 for a candidate win, 0 for a loss and 1/2 for a tie or "both bad"
(neither answer was preferred, as Chatbot Arena scores a tie). The win rate is the mean score;
0.5 means no preference. Its interval is the normal-mixture confidence sequence of
rollout.sequential (the same boundary, with the alpha and tau the rollout decides differences
with), inverted over the win rate as a score test: each candidate value is tested with the
variance it implies. It covers the true win rate at every look at once, so the shadow gate
may look after every pair.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from rollout.intervals import Interval

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class PreferenceCounts(BaseModel):
    """Judged pairs of a candidate against a baseline, from the candidate's point of view."""

    model_config = _FROZEN

    candidate: str
    baseline: str
    wins: int = Field(0, ge=0)
    losses: int = Field(0, ge=0)
    ties: int = Field(0, ge=0)
    both_bad: int = Field(0, ge=0)

    @property
    def pairs(self) -> int:
        """Every judged pair, ties and both-bad included."""
        return self.wins + self.losses + self.ties + self.both_bad

    def flipped(self) -> PreferenceCounts:
        """The same counts from the baseline's point of view."""
        return PreferenceCounts(
            candidate=self.baseline,
            baseline=self.candidate,
            wins=self.losses,
            losses=self.wins,
            ties=self.ties,
            both_bad=self.both_bad,
        )


class WinRate(BaseModel):
    """The candidate's win rate (ties half) and its always-valid confidence sequence."""

    model_config = _FROZEN

    counts: PreferenceCounts
    estimate: float = Field(ge=0.0, le=1.0)
    confidence_sequence: Interval


def win_rate(counts: PreferenceCounts, alpha: float = 0.05, tau: float = 0.05) -> WinRate | None:
    """The win rate with its (1 - alpha) confidence sequence; None before the first pair."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    n = counts.pairs
    if n == 0:
        return None
    draws = counts.ties + counts.both_bad
    estimate = (counts.wins + 0.5 * draws) / n
    low = _edge(estimate, n, alpha, tau, 0.0) if estimate > 0.0 else 0.0
    high = _edge(estimate, n, alpha, tau, 1.0) if estimate < 1.0 else 1.0
    band = Interval(estimate=estimate, low=low, high=high, confidence=1.0 - alpha)
    return WinRate(counts=counts, estimate=estimate, confidence_sequence=band)


def _radius(theta: float, n: int, alpha: float, tau: float) -> float:
    """How far from theta the mean of n scores may stray before the mSPRT rejects theta."""
    # A score in [0, 1] with mean theta has variance at most theta (1 - theta).
    v = max(theta * (1.0 - theta), 1e-12) / n
    t2 = tau * tau
    # rollout.sequential.confidence_sequence's radius, inlined: this runs ~40 times a look.
    return math.sqrt(v * (v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + math.log((v + t2) / v)))


def _edge(estimate: float, n: int, alpha: float, tau: float, end: float) -> float:
    """The win rate nearest `end` that the test at `estimate` does not reject (bisection).

    Testing each candidate theta with the variance theta would have, as a score test does
    (Wilson's interval against Wald's), keeps the band honest near 0 and 1, where the
    plug-in variance of a few lopsided pairs is far too small.
    """
    inside, outside = estimate, end
    for _ in range(40):
        mid = 0.5 * (inside + outside)
        if abs(estimate - mid) <= _radius(mid, n, alpha, tau):
            inside = mid
        else:
            outside = mid
    return inside
