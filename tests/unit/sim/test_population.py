"""The demo population's prompts: hundreds of distinct ones, popular ones repeating."""

from __future__ import annotations

import itertools
import random
from collections import Counter

from sim.population import prompt_weights, prompts


def test_hundreds_of_distinct_prompts_in_a_fixed_order() -> None:
    made = prompts()
    assert len(set(made)) == len(made) >= 500
    assert made == prompts()
    assert all("{" not in prompt for prompt in made)


def test_draws_are_skewed_so_votes_on_popular_prompts_meet() -> None:
    made = prompts()
    weights = list(itertools.accumulate(prompt_weights(len(made), 0.9)))
    draws = Counter(random.Random(1).choices(made, cum_weights=weights, k=1400))
    assert len(draws) > 300  # varied ...
    assert draws.most_common(1)[0][1] > 50  # ... and some asked by many users
    uniform = Counter(random.Random(1).choices(made, k=1400))
    assert uniform.most_common(1)[0][1] < 15
