"""Evaluator scores in `loopgate experiments show` (at 80 columns) and the console's page."""

from __future__ import annotations

import asyncio
import os
import random
import re
from typing import Any

from jinja2 import Environment, FileSystemLoader
from rich.console import Console

from cli.experiments import scores_panel
from console.routes import TEMPLATES
from rollout.counters import ExperimentCounters
from rollout.plan import RolloutPlan, ScoreMetric
from rollout.service import experiment_view
from rollout.stores.counters import MemoryCounterBackend

VERSION = "reward-model-7b@3f9c2a1d0b"


def _render(renderable: Any, width: int) -> str:
    console = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    console.file.close()
    return console.export_text()


def _view() -> dict[str, Any]:
    async def counts() -> Any:
        counters = ExperimentCounters(MemoryCounterBackend())
        weights = {"control": 50.0, "candidate-v2": 50.0}
        counters.register_version("bot", 1, weights, False, 1.0)
        rng = random.Random(7)
        for i in range(600):
            variant = "candidate-v2" if i % 2 else "control"
            counters.count_exchange("bot", 1, variant, f"u{i}", "ok", 0.1, 0.05)
            liked = rng.random() < (0.75 if variant == "candidate-v2" else 0.6)
            score = 0.2 + liked + (0.3 if variant == "candidate-v2" else 0.0) + rng.gauss(0, 0.6)
            counters.count_score("bot", 1, variant, "rm", VERSION, score)
            if i % 5 == 0:
                kind = "thumbs_up" if liked else "thumbs_down"
                counters.count_feedback("bot", 1, variant, kind, None)
                counters.count_labelled_score("bot", 1, variant, "rm", VERSION, score, liked)
        return await counters.read("bot")

    plan = RolloutPlan(
        flag="bot", control="control", canary="candidate-v2", primary=ScoreMetric(evaluator="rm")
    )
    return experiment_view(asyncio.run(counts()), plan, None, 10.0, planned=True)


def test_evaluator_scores_read_in_full_at_80_columns() -> None:
    view = _view()
    panel = scores_panel(view, 80)
    assert panel is not None
    text = _render(panel, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    (rm,) = view["scores"]
    rows = {r["name"]: r for r in rm["variants"]}
    flat = " ".join(text.split())
    assert f"evaluator rm ({VERSION})" in flat
    for name, row in rows.items():
        assert f"{row['mean']:.3g}" in text
        assert f"{row['labelled']} ({row['thumbs_up']})" in text
        ppi = row["approval_ppi"]
        assert (
            f"{100 * ppi['estimate']:.1f}% [{100 * ppi['low']:.0f}, {100 * ppi['high']:.0f}]"
            in text
        )
        assert name in text
    cs = rows["candidate-v2"]["vs_control"]["confidence_sequence"]
    assert f"{cs['estimate']:+.3g} [{cs['low']:+.3g}, {cs['high']:+.3g}]" in text
    r = rm["agreement"]["point_biserial"]
    assert f"agreement with thumbs: r = {r:.2f} (point-biserial) over 120 thumbed answers" in flat
    # Wide terminals get one table with the same numbers.
    assert f"{cs['estimate']:+.3g} [" in _render(scores_panel(view, 200), 200)
    assert scores_panel({**view, "scores": []}, 80) is None


def test_the_primary_metric_decided_on_is_the_evaluator_score() -> None:
    report = _view()["report"]
    assert report["primary_score"]["metric"] == "score:rm"
    assert report["primary_score"]["version"] == VERSION
    assert report["primary_score"]["canary_count"] == 300
    assert report["primary_score"]["sequential"]["difference"] > 0


def test_the_console_page_shows_the_same_block() -> None:
    view = _view()
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    html = env.get_template("experiment_live.html").render(experiment=view)
    text = re.sub(r"<[^>]+>", " ", html)
    flat = " ".join(text.split())
    assert "Evaluator scores" in flat
    assert "primary metric: score of evaluator rm" in flat
    (rm,) = view["scores"]
    rows = {r["name"]: r for r in rm["variants"]}
    cs = rows["candidate-v2"]["vs_control"]["confidence_sequence"]
    assert f"{cs['estimate']:+.3g} [{cs['low']:+.3g}, {cs['high']:+.3g}]" in flat
    ppi = rows["control"]["approval_ppi"]
    assert f"{100 * ppi['estimate']:.1f}% [" in flat
    assert f"r = {rm['agreement']['point_biserial']:.2f} over 120 thumbed answers" in flat
    assert "evaluators not configured" not in flat
