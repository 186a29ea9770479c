"""Micro-benchmark of flag evaluation: `python -m loadtests.bench_router`.

Prints the cost of evaluate() in microseconds, and its ratio to one bare SHA-256 of the
same input (the floor: the split hashes once per variant).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from router.evaluate import evaluate
from router.model import EvalContext, Flag, parse_flag
from router.snapshot import FlagSnapshot, assign


def _flag(n_variants: int, rules: int = 0) -> Flag:
    return parse_flag(
        {
            "key": "support-bot",
            "control": "v0",
            "variants": [
                {"name": f"v{i}", "pool": f"pool-{i}", "weight": 1} for i in range(n_variants)
            ],
            "rules": [
                {
                    "kind": "allow_units",
                    "units": [f"qa-{r}-{j}" for j in range(50)],
                    "variant": "v0",
                }
                for r in range(rules)
            ],
        }
    )


def _per_call_us(fn: Callable[[int], object], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def bench_evaluate(n: int = 50_000) -> dict[str, float]:
    """Microseconds per call for hashing alone and for evaluate() on a few flag shapes."""
    contexts = [
        EvalContext(unit_id=f"user-{i}", app_id="app", model="support-bot") for i in range(n)
    ]
    results = {
        "sha256": _per_call_us(lambda i: hashlib.sha256(f"s\0v0\0user-{i}".encode()).digest(), n)
    }
    for label, flag in (
        ("evaluate 2 variants", _flag(2)),
        ("evaluate 5 variants", _flag(5)),
        ("evaluate 2 variants, 5 rules", _flag(2, rules=5)),
    ):
        results[label] = _per_call_us(lambda i, f=flag: evaluate(f, contexts[i]), n)  # type: ignore[misc]
    snapshot = FlagSnapshot.of([_flag(2)], version=1)
    results["assign via snapshot"] = _per_call_us(
        lambda i: assign(snapshot, "support-bot", contexts[i]), n
    )
    results["build EvalContext"] = _per_call_us(
        lambda i: EvalContext(unit_id=f"user-{i}", app_id="app", model="support-bot"), n
    )
    return results


def main() -> None:
    """Print each measurement and its ratio to one SHA-256."""
    results = bench_evaluate()
    floor = results["sha256"]
    for label, micros in results.items():
        print(f"{label:32s} {micros:8.2f} us   {micros / floor:6.1f}x sha256")


if __name__ == "__main__":
    main()
