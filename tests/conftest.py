"""Shared fixtures: free ports, real servers on loopback. Fixture modules live in tests/support/."""

from __future__ import annotations

pytest_plugins: list[str] = [
    "tests.support.gateway",
    "tests.support.sim",
    "tests.support.faulty_upstream",
    "tests.support.redis",
    "tests.support.kafka",
    "tests.support.vllm",
    "tests.support.prometheus",
]
