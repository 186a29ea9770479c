"""Drift: profiles, PSI, the bounded monitor, and the gauge crossing its threshold."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from feedback.drift import (
    FEATURE_NAMES,
    SCRIPTS,
    DriftMonitor,
    Observation,
    Profile,
    finish_bucket,
    is_refusal,
    length_bucket,
    observe,
    psi,
    script_bucket,
)
from gateway.config import DriftConfig, TelemetryConfig
from gateway.exchange import Exchange
from gateway.metrics import Metrics
from gateway.observer import Observer

THRESHOLD = 0.25


def test_psi_formula() -> None:
    assert psi([10, 10], [10, 10]) == 0
    # By hand: a = (30.5/41, 10.5/41), e = (10.5/41, 30.5/41), smoothing 0.5, two buckets.
    a, e = (30.5 / 41, 10.5 / 41), (10.5 / 41, 30.5 / 41)
    expected = sum((x - y) * math.log(x / y) for x, y in zip(a, e, strict=True))
    assert psi([30, 10], [10, 30]) == pytest.approx(expected)
    assert psi([5, 0], [0, 5]) < math.inf  # empty buckets stay finite
    with pytest.raises(ValueError, match="same buckets"):
        psi([1], [1, 2])


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("Where is my parcel?", "latin"),
        ("Где моя посылка?", "cyrillic"),
        ("我的包裹在哪里", "cjk"),
        ("أين طردي؟", "arabic"),
        ("Ποῦ εἶναι", "greek"),
        ("12345 !!", "other"),
        ("", "none"),
    ],
)
def test_script_buckets(text: str, script: str) -> None:
    assert SCRIPTS[script_bucket(text)] == script


def test_feature_buckets() -> None:
    assert length_bucket(0) == 0
    assert length_bucket(8) == 1
    assert length_bucket(10**6) == 10
    assert finish_bucket("stop") == 0
    assert finish_bucket("weird") == finish_bucket("other")
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot assist with this request")
    assert not is_refusal("Sure! Your parcel is on its way.")


def test_profile_round_trips() -> None:
    p = Profile.empty()
    p.add(observe(prompt="hi", answer="hello", prompt_tokens=3, completion_tokens=2,
                  finish_reason="stop", tool_calls=False))  # fmt: skip
    assert Profile.from_json(p.to_json()) == p


def _latin() -> Observation:
    return observe(
        prompt="Where is my parcel?", answer="On its way.", prompt_tokens=12,
        completion_tokens=30, finish_reason="stop", tool_calls=False,
    )  # fmt: skip


def _cyrillic() -> Observation:
    return observe(
        prompt="Где моя посылка?", answer="Уже в пути.", prompt_tokens=12,
        completion_tokens=30, finish_reason="stop", tool_calls=False,
    )  # fmt: skip


def test_monitor_windows_are_bounded() -> None:
    monitor = DriftMonitor(window=50, max_profiles=3, min_samples=10)
    for i in range(5):
        for _ in range(80):
            monitor.add("f", f"v{i}", _latin())
    # The least recently fed profiles went; each window holds its last 50.
    assert monitor.samples() == {("f", "v2"): 50, ("f", "v3"): 50, ("f", "v4"): 50}


def test_no_score_without_baseline_or_enough_samples() -> None:
    monitor = DriftMonitor(window=100, min_samples=50)
    for _ in range(40):
        monitor.add("f", "a", _latin())
    assert monitor.scores() == {}
    monitor.freeze(now=1.0)
    assert monitor.scores() == {}  # baseline too small
    for _ in range(60):
        monitor.add("f", "a", _latin())
    monitor.freeze(now=2.0)
    assert set(monitor.scores()[("f", "a")]) == set(FEATURE_NAMES)


def _exchange(prompt: str, answer: str, rng: random.Random) -> Exchange:
    ex = Exchange(request_id="r", kind="chat", started_at=0.0, flag="bot", variant="b")
    ex.request = {"messages": [{"role": "user", "content": prompt}]}
    ex.text_parts.append(answer)
    ex.prompt_tokens = rng.randint(10, 60)
    ex.completion_tokens = rng.randint(20, 120)
    ex.finish_reason = "stop"
    return ex


def _psi_gauges(registry: CollectorRegistry) -> dict[str, float]:
    return {
        s.labels["feature"]: s.value
        for family in registry.collect()
        if family.name == "loopgate_drift_psi"
        for s in family.samples
    }


def _feed(observer: Observer, share_cyrillic: float, n: int, rng: random.Random) -> None:
    for _ in range(n):
        if rng.random() < share_cyrillic:
            observer.observe(_exchange("Где моя посылка? Подскажите.", "Она в пути.", rng))
        else:
            observer.observe(_exchange("Where is my parcel? Tell me.", "It is on its way.", rng))


@pytest.mark.parametrize(("shifted", "crosses"), [(0.6, True), (0.05, False)])
def test_shifted_prompts_move_the_gauge_past_the_threshold(
    shifted: float, crosses: bool, tmp_path: Path
) -> None:
    """Baseline: 5% Cyrillic prompts. Then 60% (shifted) or 5% again (unshifted)."""
    rng = random.Random(7)
    metrics = Metrics(CollectorRegistry())
    config = TelemetryConfig(
        drift=DriftConfig(window=500, min_samples=200, baseline_path=tmp_path / "base.json")
    )
    observer = Observer(config, metrics)
    _feed(observer, 0.05, 500, rng)
    assert observer.freeze(now=100.0) == [("bot", "b")]
    assert (tmp_path / "base.json").exists()
    assert max(_psi_gauges(metrics.registry).values()) < 0.01  # window == baseline
    _feed(observer, shifted, 500, rng)
    observer.refresh()
    gauges = _psi_gauges(metrics.registry)
    assert (gauges["prompt_script"] > THRESHOLD) is crosses
    assert gauges["prompt_length"] < THRESHOLD  # lengths did not change
    assert gauges["answer_script"] > THRESHOLD if crosses else gauges["answer_script"] < 0.1


def test_a_second_observer_follows_the_baseline_file(tmp_path: Path) -> None:
    """Workers share the file: one freezes, the others pick it up on refresh."""
    rng = random.Random(3)
    config = TelemetryConfig(
        drift=DriftConfig(window=300, min_samples=100, baseline_path=tmp_path / "base.json")
    )
    one = Observer(config, Metrics(CollectorRegistry()))
    two_metrics = Metrics(CollectorRegistry())
    two = Observer(config, two_metrics)
    _feed(one, 0.0, 300, rng)
    _feed(two, 0.9, 300, rng)
    one.freeze(now=5.0)
    two.refresh()
    assert two.drift is not None
    assert two.drift.frozen_at[("bot", "b")] == 5.0
    assert _psi_gauges(two_metrics.registry)["prompt_script"] > THRESHOLD
