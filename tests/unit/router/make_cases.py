"""Regenerate the golden bucketing vectors: `python -m tests.unit.router.make_cases`.

Only run this when the scheme changes on purpose (it never should: every assignment moves).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from router.bucketing import score, split, unit_point
from router.model import Variant

HERE = Path(__file__).parent
SHIPPED = Path(__file__).parents[3] / "router" / "cases.json"

SALTS = ["support-bot", "exp-2024-11", "", "sälz/ü"]
UNITS = ["user-1", "user-2", "alice@example.com", "", "ünïcødé-用户", "42", "app:acme"]
WEIGHT_SETS: list[list[tuple[str, float]]] = [
    [("control", 90), ("canary", 10)],
    [("control", 50), ("canary", 50)],
    [("a", 1), ("b", 1), ("c", 1)],
    [("control", 0), ("canary", 1)],
    [("a", 0.7), ("b", 0.2), ("c", 0.05), ("d", 0.05)],
    [("a", 10), ("b", 20), ("c", 30), ("d", 25), ("e", 15)],
]


def build() -> dict[str, Any]:
    """Every vector, computed by the implementation in router/bucketing.py."""
    points = []
    for salt in SALTS:
        for unit in UNITS:
            digest = hashlib.sha256(f"{salt}\0{unit}".encode()).digest()
            points.append(
                {
                    "salt": salt,
                    "unit_id": unit,
                    "uint64": str(int.from_bytes(digest[:8], "big")),
                    "point": unit_point(salt, unit),
                }
            )
    splits = []
    for salt in SALTS[:2]:
        for weights in WEIGHT_SETS:
            variants = [Variant(name=n, pool="p", weight=w) for n, w in weights]
            for unit in UNITS:
                splits.append(
                    {
                        "salt": salt,
                        "variants": [{"name": n, "weight": w} for n, w in weights],
                        "unit_id": unit,
                        "scores": [score(salt, v, unit) for v in variants],
                        "variant": split(salt, variants, unit).name,
                    }
                )
    return {
        "scheme": (
            "point(salt, unit) = (uint64 big-endian of the first 8 bytes of "
            "sha256(utf8(salt + NUL + unit)) + 0.5) / 2^64; "
            "score(v) = weight(v) / -ln(point(salt + NUL + name(v), unit)); "
            "variant = highest score, the first listed wins a tie"
        ),
        "unit_point": points,
        "split": splits,
    }


def main() -> None:
    """Write the vectors to the test copy and the copy shipped in the package."""
    text = json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
    for path in (HERE / "cases.json", SHIPPED):
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
