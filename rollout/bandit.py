"""Thompson sampling allocation on a binary feedback metric, with a floor share per variant.

Each variant's positive share gets a Beta(prior + positives, prior + negatives) posterior;
its share of traffic is the posterior probability that it is the best, estimated by Monte
Carlo, then squeezed so every variant keeps at least the floor (so the loser still gets
feedback and a control stays to compare against). Thompson (1933); Russo et al., "A Tutorial
on Thompson Sampling" (2018), section 3.
"""

from __future__ import annotations

import random
from collections.abc import Mapping


def thompson_allocation(
    outcomes: Mapping[str, tuple[int, int]],
    seed: int,
    floor: float = 0.05,
    draws: int = 10_000,
    prior: tuple[float, float] = (1.0, 1.0),
) -> dict[str, float]:
    """Traffic shares from (positives, negatives) per variant; same seed, same shares."""
    names = sorted(outcomes)
    if not names:
        raise ValueError("need at least one variant")
    if not 0.0 <= floor * len(names) <= 1.0:
        raise ValueError(f"floor {floor} times {len(names)} variants must lie in [0, 1]")
    if draws < 1:
        raise ValueError(f"need at least one draw, got {draws}")
    a0, b0 = prior
    if a0 <= 0.0 or b0 <= 0.0:
        raise ValueError(f"prior must be positive, got {prior}")
    params = []
    for name in names:
        positives, negatives = outcomes[name]
        if positives < 0 or negatives < 0:
            raise ValueError(f"negative counts for {name}")
        params.append((a0 + positives, b0 + negatives))
    # A private generator seeded here keeps the function pure: the caller's state is untouched.
    rng = random.Random(seed)
    wins = [0] * len(names)
    for _ in range(draws):
        samples = [rng.betavariate(a, b) for a, b in params]
        wins[max(range(len(names)), key=samples.__getitem__)] += 1
    free = 1.0 - floor * len(names)
    return {name: floor + free * won / draws for name, won in zip(names, wins, strict=True)}
