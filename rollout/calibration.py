"""How well an evaluator's scores agree with people: AUC for thumbs, Spearman for ratings."""

from __future__ import annotations

import math
from collections.abc import Sequence


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given the average of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return out


def auc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(score of a thumbs-up answer > score of a thumbs-down one), ties half (Mann-Whitney).

    0.5 is a coin; None when either side is empty.
    """
    if not positive or not negative:
        return None
    r = ranks([*positive, *negative])
    n_pos, n_neg = len(positive), len(negative)
    u = sum(r[:n_pos]) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None if either side is constant."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} scores but {len(ys)} ratings")
    if len(xs) < 2:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0.0 or syy == 0.0:
        return None
    return sxy / math.sqrt(sxx * syy)
