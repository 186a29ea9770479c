"""Prediction-powered inference, simulated: valid with a biased judge, tighter with a good one."""

from __future__ import annotations

import numpy as np
import pytest

from rollout.ppi import ppi_mean

TRUE_RATE = 0.62  # the share of answers people approve
LABELLED, SCORED = 150, 3000


def _draw(
    rng: np.random.Generator, bias: float, noise: float, size: int
) -> tuple[list[float], list[float]]:
    """Human approvals and the evaluator's score of the same answers.

    Each answer has a latent quality; people approve above a threshold; the evaluator sees the
    quality with `noise` and adds `bias` (a judge that likes everything a bit too much).
    """
    quality = rng.normal(0.0, 1.0, size)
    threshold = float(np.quantile(rng.normal(0.0, 1.0, 200_000), 1 - TRUE_RATE))
    approved = (quality > threshold).astype(float)
    score = 1.0 / (1.0 + np.exp(-(quality + rng.normal(0.0, noise, size)))) + bias
    return approved.tolist(), score.tolist()


def _simulate(bias: float, noise: float, runs: int, seed: int) -> tuple[float, float, float, float]:
    """(PPI coverage, naive score-mean coverage, mean PPI width, mean human-only width)."""
    rng = np.random.default_rng(seed)
    ppi_hits = naive_hits = 0
    ppi_width = human_width = 0.0
    for _ in range(runs):
        labels, label_scores = _draw(rng, bias, noise, LABELLED)
        _, scores = _draw(rng, bias, noise, SCORED)
        result = ppi_mean(labels, label_scores, scores)
        ppi_hits += result.interval.contains(TRUE_RATE)
        ppi_width += result.interval.high - result.interval.low
        human_width += result.human_only.high - result.human_only.low
        # What trusting the judge blindly gives: its mean score, as if it were the rate.
        mean, sd = float(np.mean(scores)), float(np.std(scores)) / np.sqrt(SCORED)
        naive_hits += mean - 1.96 * sd <= TRUE_RATE <= mean + 1.96 * sd
    return ppi_hits / runs, naive_hits / runs, ppi_width / runs, human_width / runs


def test_coverage_holds_with_a_deliberately_biased_judge() -> None:
    ppi, naive, _, _ = _simulate(bias=0.25, noise=1.0, runs=400, seed=17)
    assert ppi >= 0.93  # nominal 0.95; 400 runs give +-0.02
    assert naive < 0.05  # the judge's own mean is simply wrong


def test_a_good_judge_narrows_the_interval_and_a_useless_one_costs_little() -> None:
    _, _, good, human = _simulate(bias=0.1, noise=0.3, runs=150, seed=23)
    assert good < 0.8 * human
    rng = np.random.default_rng(29)
    labels, _ = _draw(rng, 0.0, 0.0, LABELLED)
    useless = rng.normal(0.0, 1.0, LABELLED + SCORED).tolist()
    result = ppi_mean(labels, useless[:LABELLED], useless[LABELLED:])
    width = result.interval.high - result.interval.low
    assert width <= 1.1 * (result.human_only.high - result.human_only.low)
    assert result.weight < 0.5


def test_weight_zero_is_the_human_only_interval_and_inputs_are_checked() -> None:
    labels, scores = [1.0, 0.0, 1.0, 1.0], [0.9, 0.2, 0.7, 0.8]
    result = ppi_mean(labels, scores, [0.5, 0.6, 0.7], weight=0.0)
    assert result.interval == result.human_only
    assert result.interval.estimate == pytest.approx(0.75)
    with pytest.raises(ValueError, match="labels but"):
        ppi_mean(labels, scores[:3], [0.5, 0.6])
    with pytest.raises(ValueError, match="need two"):
        ppi_mean([1.0], [0.5], [0.5, 0.6])
