"""A flag's shadow: validated with the flag, and a sticky pick independent of the split."""

from __future__ import annotations

from typing import Any

import pytest

from router.errors import FlagValidationError
from router.evaluate import evaluate
from router.model import EvalContext, Flag, parse_flag
from router.shadow import shadow_for


def _flag(**changes: Any) -> Flag:
    data: dict[str, Any] = {
        "key": "support-bot",
        "control": "control",
        "variants": [
            {"name": "control", "pool": "a", "weight": 90},
            {"name": "canary", "pool": "b", "weight": 10},
            {"name": "candidate", "pool": "c", "weight": 0},
        ],
        "shadow": {"variant": "candidate", "share": 0.25},
    }
    data.update(changes)
    return parse_flag(data)


def _picked(flag: Flag, units: range, **ctx: Any) -> list[str]:
    out = []
    for i in units:
        context = EvalContext(unit_id=f"u{i}", app_id="app", model=flag.key, **ctx)
        if shadow_for(flag, evaluate(flag, context), context.unit_id) is not None:
            out.append(f"u{i}")
    return out


def test_defaults_and_weight_zero_shadow_variant() -> None:
    shadow = _flag().shadow
    assert shadow is not None
    assert (shadow.max_in_flight, shadow.timeout_s, shadow.stream) == (32, 60.0, False)
    assert shadow.tokens_per_minute is None


@pytest.mark.parametrize(
    ("shadow", "message"),
    [
        ({"variant": "nope", "share": 0.1}, "shadow.variant 'nope' is not a variant"),
        ({"variant": "control", "share": 0.1}, "is the control"),
        ({"variant": "candidate", "share": 0}, "share"),
        ({"variant": "candidate", "share": 1.5}, "share"),
        ({"variant": "candidate", "share": 0.1, "max_in_flight": 0}, "max_in_flight"),
        ({"variant": "candidate", "share": 0.1, "timeout_s": -1}, "timeout_s"),
        ({"variant": "candidate", "share": 0.1, "queue": 5}, "queue"),
    ],
)
def test_bad_shadow_settings_are_refused_with_the_field(
    shadow: dict[str, Any], message: str
) -> None:
    with pytest.raises(FlagValidationError, match=message):
        _flag(shadow=shadow)


def test_share_is_sticky_and_close_to_the_setting() -> None:
    flag = _flag()
    first = _picked(flag, range(4000))
    assert first == _picked(flag, range(4000))  # same units every time
    # Units already on the shadow's variant are never mirrored (weight 0 here: none are).
    assert 0.22 < len(first) / 4000 < 0.28


def test_pick_is_independent_of_the_split() -> None:
    flag = _flag()
    picked = set(_picked(flag, range(6000)))
    canary = set()
    for i in range(6000):
        ctx = EvalContext(unit_id=f"u{i}", app_id="app", model=flag.key)
        if evaluate(flag, ctx).variant.name == "canary":
            canary.add(f"u{i}")
    # About a quarter of the canary's units are shadowed too, as of everyone's.
    assert 0.2 < len(picked & canary) / len(canary) < 0.3


def test_raising_the_share_only_adds_units() -> None:
    low = set(_picked(_flag(shadow={"variant": "candidate", "share": 0.1}), range(3000)))
    high = set(_picked(_flag(shadow={"variant": "candidate", "share": 0.3}), range(3000)))
    assert low < high


def test_no_shadow_when_killed_disabled_qa_or_already_on_the_variant() -> None:
    assert _picked(_flag(killed=True), range(500)) == []
    assert _picked(_flag(enabled=False), range(500)) == []
    assert _picked(_flag(), range(500), qa_variant="canary", qa_allowed=True) == []
    on_shadow = _flag(
        variants=[
            {"name": "control", "pool": "a", "weight": 0},
            {"name": "candidate", "pool": "c", "weight": 1},
        ]
    )
    assert _picked(on_shadow, range(500)) == []
    assert _picked(_flag(shadow=None), range(500)) == []
