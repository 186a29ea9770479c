"""Agreement of scores with people: AUC and Spearman against scipy's, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rollout.calibration import auc, ranks, spearman


def test_ranks_average_ties() -> None:
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]


def test_auc_matches_mann_whitney_with_ties() -> None:
    rng = np.random.default_rng(3)
    pos = rng.integers(1, 6, 80).astype(float).tolist()
    neg = rng.integers(1, 5, 60).astype(float).tolist()
    u = stats.mannwhitneyu(pos, neg).statistic
    assert auc(pos, neg) == pytest.approx(u / (80 * 60))
    assert auc([2.0, 3.0], [1.0]) == 1.0
    assert auc([1.0], [1.0]) == 0.5
    assert auc([], [1.0]) is None


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(4)
    score = rng.normal(size=200)
    rating = np.clip(np.round(3 + score + rng.normal(size=200)), 1, 5)
    expected = stats.spearmanr(score, rating).statistic
    assert spearman(score.tolist(), rating.tolist()) == pytest.approx(expected)
    assert spearman([1.0, 2.0], [3.0, 3.0]) is None
    with pytest.raises(ValueError, match="ratings"):
        spearman([1.0], [1.0, 2.0])
