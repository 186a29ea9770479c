"""Numbers the console shows: weight-change previews, Cohen's kappa, win rates (pure)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from router.bucketing import split
from router.model import Flag

PREVIEW_UNITS = 4_000


@dataclass(frozen=True, slots=True)
class Move:
    """A share of units that would move from one variant to another."""

    source: str
    target: str
    share: float


def exact_moves(flag: Flag, weights: Mapping[str, float]) -> list[Move] | None:
    """The moves when one variant's weight changes relative to the others; else None.

    The weighted rendezvous split is an exponential race: shares are weight / total, and
    scaling every weight alike moves nobody. When one variant's weight rises relative to
    the rest, units only move into it (each other variant gives up what its share falls);
    when it falls, units only leave it, to the others in proportion to their weights. When
    several change relative to each other, units also move between the others: sample.
    """
    after = flag.with_weights(weights)
    old = {v.name: v.weight for v in flag.variants}
    new = {v.name: v.weight for v in after.variants}
    old_total, new_total = sum(old.values()), sum(new.values())
    if old_total <= 0 or new_total <= 0:
        return None
    old_share = {n: w / old_total for n, w in old.items()}
    new_share = {n: w / new_total for n, w in new.items()}
    for x in old:
        others = [n for n in old if n != x]
        if any(old[n] == 0 and new[n] > 0 for n in others):
            continue
        ratios = [new[n] / old[n] for n in others if old[n] > 0]
        if ratios and max(ratios) - min(ratios) > 1e-9 * max(1.0, max(ratios)):
            continue
        if new_share[x] >= old_share[x]:
            moves = [Move(n, x, old_share[n] - new_share[n]) for n in others]
        else:
            moves = [Move(x, n, new_share[n] - old_share[n]) for n in others]
        return sorted((m for m in moves if m.share > 1e-12), key=lambda m: (m.source, m.target))
    return None


def preview_weights(
    flag: Flag, weights: Mapping[str, float], units: int = PREVIEW_UNITS
) -> list[Move]:
    """Where units move if `flag` took `weights`: sample units bucketed under both splits."""
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
