"""Prediction-powered inference: a human-approval rate from many scores and fewer labels.

Angelopoulos, Bates, Fannjiang, Jordan and Zrnic, "Prediction-powered inference" (Science
382, 2023) and the power-tuned PPI++ (Angelopoulos, Duchi and Zrnic, 2023). With n answers
labelled by people (y, 0/1 or a rating) that an evaluator also scored (f), and N more answers
only scored (f~), the estimate of the human mean is

    theta = mean(y) + lambda * (mean(f~) - mean(f))

The evaluator's scores only enter through a difference of its own means, so any bias of the
evaluator cancels: the interval stays valid however wrong it is, and lambda = 0 is the
human-only estimate. lambda = cov(y, f) / ((1 + n / N) var(f)) minimises the variance, so a
good evaluator (scores that track the labels) narrows the interval, and a useless one costs
almost nothing. Scores may be on any scale (a reward, a 1-5 grade): lambda rescales them.

The labelled answers must be a random sample of the scored ones (the same variant, flag and
time window), not the ones people chose to rate; see docs/evaluators.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from rollout.distributions import two_sided_z
from rollout.intervals import Interval


class PPIResult(BaseModel):
    """The prediction-powered interval beside the human-only one, with what made it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    interval: Interval
    human_only: Interval
    weight: float  # lambda: 0 uses no scores, 1 is plain PPI
    labelled: int
    scored: int


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _cov(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = _mean(xs), _mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (len(xs) - 1)


def _interval(estimate: float, variance: float, confidence: float) -> Interval:
    half = two_sided_z(confidence) * math.sqrt(max(variance, 0.0))
    return Interval(
        estimate=estimate, low=estimate - half, high=estimate + half, confidence=confidence
    )


def ppi_mean(
    labels: Sequence[float],
    label_scores: Sequence[float],
    unlabelled_scores: Sequence[float],
    confidence: float = 0.95,
    weight: float | None = None,
) -> PPIResult:
    """PPI++ interval for the mean human label; `weight` fixes lambda (None: tuned, in [0, 1])."""
    n, big_n = len(labels), len(unlabelled_scores)
    if n != len(label_scores):
        raise ValueError(f"{n} labels but {len(label_scores)} scores for them")
    if n < 2 or big_n < 2:
        raise ValueError(f"need two labelled and two unlabelled answers, got {n} and {big_n}")
    var_y = _cov(labels, labels)
    human = _interval(_mean(labels), var_y / n, confidence)
    if weight is None:
        var_f = _cov([*label_scores, *unlabelled_scores], [*label_scores, *unlabelled_scores])
        tuned = _cov(labels, label_scores) / ((1.0 + n / big_n) * var_f) if var_f > 0 else 0.0
        # Clipped to [0, 1]: a negative weight would trust an evaluator that disagrees with
        # people, and above 1 the estimate leans on scores more than plain PPI does.
        weight = min(1.0, max(0.0, tuned))
    lam = weight
    residuals = [y - lam * f for y, f in zip(labels, label_scores, strict=True)]
    estimate = lam * _mean(unlabelled_scores) + _mean(residuals)
    variance = lam * lam * _cov(unlabelled_scores, unlabelled_scores) / big_n
    variance += _cov(residuals, residuals) / n
    return PPIResult(
        interval=_interval(estimate, variance, confidence),
        human_only=human,
        weight=lam,
        labelled=n,
        scored=big_n,
    )


class LabelledMoments(BaseModel):
    """Running sums over answers with a 0/1 label y (thumbs up = 1) and a score f."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = 0
    labels: float = 0.0  # sum of y (= sum of y^2 for 0/1 labels)
    label_scores: float = 0.0  # sum of y * f
    scores: float = 0.0  # sum of f
    scores_sq: float = 0.0  # sum of f^2


def ppi_from_moments(
    labelled: LabelledMoments,
    unlabelled_count: int,
    unlabelled_total: float,
    unlabelled_total_sq: float,
    confidence: float = 0.95,
    weight: float | None = None,
) -> PPIResult:
    """ppi_mean from running sums (0/1 labels): what the experiment counters keep."""
    n, big_n = labelled.count, unlabelled_count
    if n < 2 or big_n < 2:
        raise ValueError(f"need two labelled and two unlabelled answers, got {n} and {big_n}")
    y_bar, f_bar, u_bar = labelled.labels / n, labelled.scores / n, unlabelled_total / big_n
    var_y = max(0.0, (labelled.labels - n * y_bar * y_bar) / (n - 1))
    cov_yf = (labelled.label_scores - n * y_bar * f_bar) / (n - 1)
    var_f_lab = max(0.0, (labelled.scores_sq - n * f_bar * f_bar) / (n - 1))
    var_u = max(0.0, (unlabelled_total_sq - big_n * u_bar * u_bar) / (big_n - 1))
    human = _interval(y_bar, var_y / n, confidence)
    if weight is None:
        m = n + big_n
        all_bar = (labelled.scores + unlabelled_total) / m
        var_f = max(
            0.0, (labelled.scores_sq + unlabelled_total_sq - m * all_bar * all_bar) / (m - 1)
        )
        tuned = cov_yf / ((1.0 + n / big_n) * var_f) if var_f > 0 else 0.0
        weight = min(1.0, max(0.0, tuned))
    lam = weight
    estimate = lam * u_bar + y_bar - lam * f_bar
    var_residual = max(0.0, var_y - 2.0 * lam * cov_yf + lam * lam * var_f_lab)
    variance = lam * lam * var_u / big_n + var_residual / n
    return PPIResult(
        interval=_interval(estimate, variance, confidence),
        human_only=human,
        weight=lam,
        labelled=n,
        scored=big_n,
    )
