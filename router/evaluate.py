"""Evaluation is a function: (flag, context) -> assignment, and the result says why."""

from __future__ import annotations

from router.bucketing import split
from router.model import Assignment, EvalContext, Flag, Reason


def _assign(flag: Flag, name: str, reason: Reason) -> Assignment:
    return Assignment(
        flag_key=flag.key, variant=flag.variant(name), reason=reason, flag_version=flag.version
    )


def evaluate(flag: Flag, ctx: EvalContext) -> Assignment:
    """The variant `ctx` gets from `flag`: disabled, kill switch, QA override, rules, split."""
    if not flag.enabled:
        return _assign(flag, flag.default or flag.control, "disabled")
    if flag.killed:
        return _assign(flag, flag.control, "kill_switch")
    if ctx.qa_variant is not None and ctx.qa_allowed and flag.has_variant(ctx.qa_variant):
        return _assign(flag, ctx.qa_variant, "qa_override")
    for rule in flag.rules:
        if rule.matches(ctx):
            return _assign(flag, rule.target(flag.control), rule.kind)
    variant = split(flag.salt, flag.variants, ctx.unit_id)
    return Assignment(flag_key=flag.key, variant=variant, reason="split", flag_version=flag.version)
