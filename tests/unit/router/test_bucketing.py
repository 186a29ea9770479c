"""Bucketing: golden vectors, and the properties assignment promises (Hypothesis)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from router.bucketing import score, split, unit_point
from router.model import Variant

CASES = Path(__file__).with_name("cases.json")
SHIPPED = Path(__file__).parents[3] / "router" / "cases.json"


def _variants(weights: list[float]) -> list[Variant]:
    return [Variant(name=f"v{i}", pool="p", weight=w) for i, w in enumerate(weights)]


def _cases() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(CASES.read_text(encoding="utf-8"))
    return data


def test_shipped_cases_are_the_tested_cases() -> None:
    assert SHIPPED.read_bytes() == CASES.read_bytes()


@pytest.mark.parametrize(
    "case", _cases()["unit_point"], ids=lambda c: f"{c['salt']}|{c['unit_id']}"
)
def test_golden_unit_points(case: dict[str, Any]) -> None:
    point = unit_point(case["salt"], case["unit_id"])
    assert point == case["point"]
    assert point == (int(case["uint64"]) + 0.5) / 2**64


def test_golden_splits() -> None:
    cases = _cases()["split"]
    assert len(cases) >= 50
    for case in cases:
        variants = [Variant(name=v["name"], pool="p", weight=v["weight"]) for v in case["variants"]]
        assert split(case["salt"], variants, case["unit_id"]).name == case["variant"], case
        for variant, expected in zip(variants, case["scores"], strict=True):
            assert score(case["salt"], variant, case["unit_id"]) == pytest.approx(
                expected, rel=1e-12
            )


weights_st = st.lists(st.integers(0, 100), min_size=2, max_size=5).filter(lambda w: sum(w) > 0)
units_st = st.lists(st.text(max_size=20), min_size=1, max_size=50, unique=True)


@given(salt=st.text(max_size=20), unit=st.text(max_size=40))
def test_point_is_sticky_and_inside_the_open_interval(salt: str, unit: str) -> None:
    point = unit_point(salt, unit)
    assert 0.0 < point < 1.0
    assert unit_point(salt, unit) == point


@given(weights=weights_st, units=units_st)
def test_split_is_sticky_and_never_picks_a_zero_weight(
    weights: list[int], units: list[str]
) -> None:
    variants = _variants([float(w) for w in weights])
    rebuilt = [Variant.model_validate_json(v.model_dump_json()) for v in variants]
    for unit in units:
        chosen = split("salt", variants, unit)
        assert chosen.weight > 0
        assert split("salt", rebuilt, unit).name == chosen.name


@settings(max_examples=150)
@given(
    weights=weights_st,
    data=st.data(),
    units=st.lists(st.integers(0, 10**9), min_size=100, max_size=100, unique=True),
)
def test_one_weight_change_moves_units_only_into_or_out_of_that_variant(
    weights: list[int], data: st.DataObject, units: list[int]
) -> None:
    j = data.draw(st.integers(0, len(weights) - 1), label="changed variant")
    new = data.draw(st.integers(0, 100), label="new weight")
    after_weights = [*weights[:j], new, *weights[j + 1 :]]
    if sum(after_weights) == 0:
        return
    before, after = (
        _variants([float(w) for w in weights]),
        _variants([float(w) for w in after_weights]),
    )
    for unit_id in map(str, units):
        a, b = split("s", before, unit_id).name, split("s", after, unit_id).name
        if a == b:
            continue
        if new > weights[j]:
            # Raised: nobody leaves v_j, and whoever moves, moves into v_j.
            assert b == f"v{j}", (unit_id, a, b)
        else:
            # Lowered: nobody enters v_j, and whoever moves, moves out of v_j.
            assert a == f"v{j}", (unit_id, a, b)


@settings(max_examples=150)
@given(
    data=st.data(),
    units=st.lists(st.integers(0, 10**9), min_size=100, max_size=100, unique=True),
)
def test_any_weight_change_moves_a_unit_from_a_to_b_only_if_b_gained_on_a(
    data: st.DataObject, units: list[int]
) -> None:
    n = data.draw(st.integers(2, 5), label="variants")
    vector = st.lists(st.integers(0, 100), min_size=n, max_size=n).filter(lambda w: sum(w) > 0)
    w0, w1 = data.draw(vector, label="before"), data.draw(vector, label="after")
    before, after = _variants([float(w) for w in w0]), _variants([float(w) for w in w1])
    for unit_id in map(str, units):
        a = int(split("s", before, unit_id).name[1:])
        b = int(split("s", after, unit_id).name[1:])
        if a != b:
            # b's weight relative to a's went up (cross-multiplied so zero weights work).
            assert w1[b] * w0[a] >= w0[b] * w1[a], (unit_id, w0, w1, a, b)


@pytest.mark.parametrize(
    "weights",
    [[90, 10], [50, 50], [99, 1], [1, 1, 1], [70, 20, 5, 5], [10, 20, 30, 25, 15]],
)
def test_split_honours_weights_chi_square_over_100k_units(weights: list[float]) -> None:
    variants = _variants(weights)
    counts = dict.fromkeys((v.name for v in variants), 0)
    n = 100_000
    for i in range(n):
        counts[split("dist-salt", variants, f"unit-{i}").name] += 1
    total = sum(weights)
    expected = [n * w / total for w in weights]
    result = stats.chisquare(list(counts.values()), expected)
    # Deterministic units, so this is a fixed check; 1e-4 leaves room for any honest hash.
    assert result.pvalue > 1e-4, (counts, expected, result)


def test_points_are_uniform() -> None:
    n, bins = 100_000, 50
    counts = [0] * bins
    for i in range(n):
        counts[math.floor(unit_point("uniform", f"u{i}") * bins)] += 1
    assert stats.chisquare(counts).pvalue > 1e-4


def test_two_flags_with_different_salts_assign_independently() -> None:
    first, second = _variants([50, 50]), _variants([30, 70])
    table = [[0, 0], [0, 0]]
    for i in range(100_000):
        unit = f"unit-{i}"
        a = int(split("flag-one", first, unit).name[1:])
        b = int(split("flag-two", second, unit).name[1:])
        table[a][b] += 1
    result = stats.chi2_contingency(table)
    assert result.pvalue > 1e-4, table
