"""Thompson sampling allocation: reproducible, floored, favouring the better arm."""

from __future__ import annotations

import pytest

from rollout.bandit import thompson_allocation


def test_same_seed_same_shares_and_they_sum_to_one() -> None:
    outcomes = {"a": (30, 70), "b": (40, 60)}
    first = thompson_allocation(outcomes, seed=1, draws=2000)
    assert first == thompson_allocation(outcomes, seed=1, draws=2000)
    assert sum(first.values()) == pytest.approx(1.0)


def test_clearly_better_arm_gets_all_but_the_floor() -> None:
    shares = thompson_allocation({"a": (100, 900), "b": (500, 500)}, seed=2, floor=0.1, draws=2000)
    assert shares["a"] == pytest.approx(0.1)
    assert shares["b"] == pytest.approx(0.9)


def test_no_data_splits_evenly() -> None:
    shares = thompson_allocation({"a": (0, 0), "b": (0, 0), "c": (0, 0)}, seed=3, draws=6000)
    for share in shares.values():
        assert share == pytest.approx(1 / 3, abs=0.03)


def test_probability_of_being_best_matches_a_known_case() -> None:
    # Beta(2, 1) vs Beta(1, 1): P(X > Y) = integral of 2x * x dx = 2/3.
    shares = thompson_allocation({"a": (1, 0), "b": (0, 0)}, seed=4, floor=0.0, draws=20_000)
    assert shares["a"] == pytest.approx(2 / 3, abs=0.015)


@pytest.mark.parametrize("floor", [-0.1, 0.6])
def test_impossible_floor_raises(floor: float) -> None:
    with pytest.raises(ValueError, match="floor"):
        thompson_allocation({"a": (1, 1), "b": (1, 1)}, seed=0, floor=floor)
