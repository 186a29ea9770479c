"""Evaluation: each way a variant is chosen, and the reason it reports."""

from __future__ import annotations

from typing import Any

import pytest

from router.evaluate import evaluate
from router.model import EvalContext
from router.snapshot import FlagSnapshot, assign
from tests.unit.router.conftest import make_flag


def ctx(unit: str = "u1", app: str = "app", **kw: Any) -> EvalContext:
    return EvalContext(unit_id=unit, app_id=app, model="support-bot", **kw)


def test_split_is_the_fallback_and_carries_the_version() -> None:
    a = evaluate(make_flag(version=3), ctx())
    assert (a.flag_key, a.reason, a.flag_version) == ("support-bot", "split", 3)
    assert a.variant.pool in {"policy-a", "policy-b"}


def test_disabled_sends_everyone_to_the_default_or_control() -> None:
    rules = [{"kind": "allow_units", "units": ["u1"], "variant": "canary"}]
    off = make_flag(enabled=False, killed=True, rules=rules)
    assert (evaluate(off, ctx()).variant.name, evaluate(off, ctx()).reason) == (
        "control",
        "disabled",
    )
    assert evaluate(off.replace(default="canary"), ctx()).variant.name == "canary"


def test_kill_switch_beats_rules_and_qa() -> None:
    rules = [{"kind": "allow_units", "units": ["u1"], "variant": "canary"}]
    killed = make_flag(killed=True, rules=rules)
    result = evaluate(killed, ctx(qa_variant="canary", qa_allowed=True))
    assert (result.variant.name, result.reason) == ("control", "kill_switch")


def test_qa_override_only_when_allowed_and_only_for_a_real_variant() -> None:
    flag = make_flag(
        variants=[
            {"name": "control", "pool": "policy-a", "weight": 1},
            {"name": "canary", "pool": "policy-b", "weight": 0},
        ]
    )
    assert evaluate(flag, ctx(qa_variant="canary", qa_allowed=True)).reason == "qa_override"
    assert evaluate(flag, ctx(qa_variant="canary", qa_allowed=True)).variant.name == "canary"
    assert evaluate(flag, ctx(qa_variant="canary")).reason == "split"
    assert evaluate(flag, ctx(qa_variant="ghost", qa_allowed=True)).reason == "split"


@pytest.mark.parametrize(
    ("rule", "context", "variant"),
    [
        ({"kind": "allow_units", "units": ["u1"], "variant": "canary"}, ctx(), "canary"),
        ({"kind": "deny_units", "units": ["u1"]}, ctx(), "control"),
        ({"kind": "allow_apps", "apps": ["app"], "variant": "canary"}, ctx(), "canary"),
        ({"kind": "deny_apps", "apps": ["app"]}, ctx(), "control"),
        (
            {"kind": "attr_equals", "attribute": "tier", "value": "gold", "variant": "canary"},
            ctx(attributes={"tier": "gold"}),
            "canary",
        ),
        (
            {"kind": "attr_in", "attribute": "region", "values": ["eu", "uk"], "variant": "canary"},
            ctx(attributes={"region": "uk"}),
            "canary",
        ),
        ({"kind": "force_variant", "apps": ["app"], "variant": "canary"}, ctx(), "canary"),
        ({"kind": "force_variant", "units": ["u1"], "variant": "canary"}, ctx(), "canary"),
    ],
)
def test_each_rule_kind_matches_and_is_the_reason(
    rule: dict[str, Any], context: EvalContext, variant: str
) -> None:
    # All weight on control, so only the rule can send a unit to canary.
    weights = [
        {"name": "control", "pool": "policy-a", "weight": 1},
        {"name": "canary", "pool": "policy-b", "weight": 0},
    ]
    flag = make_flag(variants=weights, rules=[rule])
    result = evaluate(flag, context)
    assert (result.variant.name, result.reason) == (variant, rule["kind"])
    other = EvalContext(unit_id="u9", app_id="other", model="support-bot")
    assert evaluate(flag, other).reason == "split"


def test_rules_apply_in_order_and_deny_holds_out() -> None:
    rules = [
        {"kind": "deny_apps", "apps": ["internal"]},
        {"kind": "allow_units", "units": ["u1"], "variant": "canary"},
    ]
    flag = make_flag(rules=rules)
    assert evaluate(flag, ctx(app="internal")).reason == "deny_apps"
    assert evaluate(flag, ctx(app="internal")).variant.name == "control"
    assert evaluate(flag, ctx(app="web")).reason == "allow_units"
    assert evaluate(flag, ctx(attributes={})).variant.name == "canary"


def test_assign_looks_up_by_model_and_returns_none_without_a_flag() -> None:
    snapshot = FlagSnapshot.of([make_flag("support-bot")], version=7)
    assert assign(snapshot, "other-model", ctx()) is None
    result = assign(snapshot, "support-bot", ctx())
    assert result is not None
    assert result.flag_key == "support-bot"
    assert snapshot.version == 7
    assert [f.key for f in snapshot] == ["support-bot"]
