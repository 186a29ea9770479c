"""Which requests a flag's shadow mirrors: a sticky hash of the unit, independent of the split.

    shadowed(unit) = point(salt + "\\0shadow", unit) < share

The point is router.bucketing's (portable, documented in docs/routing.md); a salt of its own
keeps the shadow sample independent of which variant the unit is split into, so a shadow
share of 5% is 5% of every variant's units.
"""

from __future__ import annotations

from router.bucketing import unit_point
from router.model import Assignment, Flag, Shadow

# Assignments a shadow never mirrors: a disabled flag or a kill switch (kill switches turn
# shadows off too) and a QA override (a tester forcing a variant is not traffic). The split and
# targeting rules are mirrored.
_NOT_MIRRORED = frozenset({"disabled", "kill_switch", "qa_override"})


def shadow_salt(flag: Flag) -> str:
    """The salt of the shadow's own hash."""
    return f"{flag.salt}\0shadow"


def shadow_for(flag: Flag, assignment: Assignment, unit_id: str) -> Shadow | None:
    """The flag's shadow when this request is one it mirrors, else None (pure)."""
    shadow = flag.shadow
    if shadow is None or not flag.enabled or flag.killed:
        return None
    if assignment.reason in _NOT_MIRRORED:
        return None
    if assignment.variant.name == shadow.variant:
        return None  # the unit is already served by the shadow's variant: nothing to compare
    if unit_point(shadow_salt(flag), unit_id) >= shadow.share:
        return None
    return shadow
