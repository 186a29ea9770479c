"""The shadow gate: may a canary start, judging by its shadow pairs? (pure)

Rules, first match wins (docs/shadow.md):
1. fewer than min_pairs judged pairs                          -> pending (hold at 0%)
2. lower bound of the win rate >= min_win_rate                -> pass (the ladder begins)
3. upper bound of the win rate < min_win_rate                 -> fail (roll the plan back)
4. max_pairs judged and the gate still not passed             -> fail
5. otherwise                                                  -> pending

The bounds are the always-valid confidence sequence of rollout.winrate, so the gate may be
checked every interval without inflating its error rates: a candidate whose true win rate is
below min_win_rate passes with probability at most alpha / 2, however often it is looked at.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from rollout.counters import ExperimentCounts, preference_pairs, preferences
from rollout.plan import ShadowGate
from rollout.winrate import PreferenceCounts, WinRate, win_rate

GateStatus = Literal["pending", "pass", "fail"]


class GateReport(BaseModel):
    """The gate's verdict, the numbers behind it, and why, in words."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: GateStatus
    counts: PreferenceCounts
    win_rate: WinRate | None
    reasons: tuple[str, ...]


def pair_counts(counts: ExperimentCounts, candidate: str, baseline: str) -> PreferenceCounts:
    """Judged pairs of candidate against baseline in every counted version of the flag."""
    found = preferences(counts, candidate, baseline)
    return PreferenceCounts(
        candidate=candidate,
        baseline=baseline,
        wins=found["win"],
        losses=found["loss"],
        ties=found["tie"],
        both_bad=found["both_bad"],
    )


def describe(rate: WinRate | None, counts: PreferenceCounts) -> str:
    """`win rate 61.0% [52.3, 69.1] over 200 pairs (110 won, 68 lost, 22 tied or both bad)`."""
    tally = (
        f"{counts.pairs} pairs ({counts.wins} won, {counts.losses} lost, "
        f"{counts.ties + counts.both_bad} tied or both bad)"
    )
    if rate is None:
        return f"no judged pairs of {counts.candidate} against {counts.baseline} yet"
    cs = rate.confidence_sequence
    return (
        f"{counts.candidate} vs {counts.baseline}: win rate {100 * rate.estimate:.1f}% "
        f"[{100 * cs.low:.1f}, {100 * cs.high:.1f}] over {tally}"
    )


def check_shadow_gate(
    gate: ShadowGate, counts: PreferenceCounts, alpha: float = 0.05, tau: float = 0.05
) -> GateReport:
    """The gate's verdict on these counts."""
    rate = win_rate(counts, alpha, tau)
    said = describe(rate, counts)
    bound = f"{100 * gate.min_win_rate:.1f}%"
    n = counts.pairs
    if rate is None or n < gate.min_pairs:
        why = f"shadow gate: {n} of {gate.min_pairs} judged pairs; holding the canary at 0%"
        return GateReport(status="pending", counts=counts, win_rate=rate, reasons=(why, said))
    low, high = rate.confidence_sequence.low, rate.confidence_sequence.high
    if low >= gate.min_win_rate:
        why = f"shadow gate passed: lower bound {100 * low:.1f}% >= {bound}"
        return GateReport(status="pass", counts=counts, win_rate=rate, reasons=(why, said))
    if high < gate.min_win_rate:
        why = f"shadow gate failed: upper bound {100 * high:.1f}% < {bound}; the canary is worse"
        return GateReport(status="fail", counts=counts, win_rate=rate, reasons=(why, said))
    if gate.max_pairs is not None and n >= gate.max_pairs:
        why = (
            f"shadow gate failed: {n} judged pairs (max_pairs {gate.max_pairs}) did not show "
            f"a win rate >= {bound} (lower bound {100 * low:.1f}%)"
        )
        return GateReport(status="fail", counts=counts, win_rate=rate, reasons=(why, said))
    why = (
        f"shadow gate: lower bound {100 * low:.1f}% < {bound} <= upper bound "
        f"{100 * high:.1f}%; not decided yet, holding the canary at 0%"
    )
    return GateReport(status="pending", counts=counts, win_rate=rate, reasons=(why, said))


def shadow_view(
    counts: ExperimentCounts,
    control: str,
    gate: ShadowGate | None = None,
    canary: str | None = None,
    alpha: float = 0.05,
    tau: float = 0.05,
) -> dict[str, Any]:
    """Every judged variant pair's win rate, and the gate's verdict when the plan has one:
    the JSON the admin API returns."""
    pairs = []
    for first, second in preference_pairs(counts):
        # Against control where it is one of the two; else the first name is the baseline.
        candidate, baseline = (first, second) if second == control else (second, first)
        found = pair_counts(counts, candidate, baseline)
        rate = win_rate(found, alpha, tau)
        pairs.append(
            {
                **found.model_dump(mode="json"),
                "pairs": found.pairs,
                "win_rate": rate.model_dump(mode="json")["confidence_sequence"] if rate else None,
            }
        )
    report = None
    if gate is not None and canary is not None:
        verdict = check_shadow_gate(gate, pair_counts(counts, canary, control), alpha, tau)
        report = {
            "status": verdict.status,
            "min_pairs": gate.min_pairs,
            "min_win_rate": gate.min_win_rate,
            "max_pairs": gate.max_pairs,
            "reasons": list(verdict.reasons),
        }
    return {"pairs": pairs, "gate": report}
