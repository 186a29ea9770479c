"""Numbers the console shows: weight-change previews, Cohen's kappa, win rates (pure)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from router.bucketing import split
from router.model import Flag

PREVIEW_UNITS = 20_000


@dataclass(frozen=True, slots=True)
class Move:
    """A share of units that would move from one variant to another."""

    source: str
    target: str
    share: float


def preview_weights(
    flag: Flag, weights: Mapping[str, float], units: int = PREVIEW_UNITS
) -> list[Move]:
    """Where units move if `flag` took `weights`: bucket sample units under both splits."""
    after = flag.with_weights(weights)
    moves: Counter[tuple[str, str]] = Counter()
    for i in range(units):
        unit = f"preview-{i}"
        old = split(flag.salt, flag.variants, unit).name
        new = split(after.salt, after.variants, unit).name
        if old != new:
            moves[(old, new)] += 1
    return [Move(s, t, n / units) for (s, t), n in sorted(moves.items())]


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Agreement of two raters beyond chance over items both labelled; None without data."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first = Counter(a for a, _ in pairs)
    second = Counter(b for _, b in pairs)
    expected = sum(first[k] * second.get(k, 0) for k in first) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def wilson(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default); (0, 1) without data."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class WinRate:
    """How often `first` beat `second` (ties count half), with a 95% interval."""

    first: str
    second: str
    wins: int
    losses: int
    ties: int
    both_bad: int
    rate: float | None
    low: float
    high: float


def win_rates(choices: Iterable[tuple[str, str, str]]) -> list[WinRate]:
    """Per unordered pair of variants, from (variant shown as A, variant as B, winner)."""
    tally: dict[tuple[str, str], Counter[str]] = {}
    for a, b, winner in choices:
        first, second = sorted((a, b))
        flipped = (a, b) != (first, second)
        outcome = winner
        if flipped and winner in ("a", "b"):
            outcome = "b" if winner == "a" else "a"
        tally.setdefault((first, second), Counter())[outcome] += 1
    out = []
    for (first, second), c in sorted(tally.items()):
        decided = c["a"] + c["b"] + c["tie"]
        score = c["a"] + 0.5 * c["tie"]
        low, high = wilson(score, decided)
        rate = score / decided if decided else None
        out.append(WinRate(first, second, c["a"], c["b"], c["tie"], c["both_bad"], rate, low, high))
    return out
