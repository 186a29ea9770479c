"""Flag builders shared by the router tests."""

from __future__ import annotations

from typing import Any

from router.model import Flag, parse_flag

POOLS = frozenset({"policy-a", "policy-b", "policy-c"})


def flag_data(key: str = "support-bot", **changes: Any) -> dict[str, Any]:
    """A valid flag as plain data: control on policy-a, canary on policy-b, 90/10."""
    data: dict[str, Any] = {
        "key": key,
        "description": "test flag",
        "owner": "tests",
        "control": "control",
        "variants": [
            {"name": "control", "pool": "policy-a", "served_model": "policy-a", "weight": 90},
            {"name": "canary", "pool": "policy-b", "served_model": "policy-b", "weight": 10},
        ],
    }
    data.update(changes)
    return data


def make_flag(key: str = "support-bot", **changes: Any) -> Flag:
    """A valid Flag (see flag_data)."""
    return parse_flag(flag_data(key, **changes))
