"""The shadow parts of `loopgate experiments show` and `loopgate flags show`, at 80 columns."""

from __future__ import annotations

import asyncio
import io
import os
from typing import Any

from rich.console import Console

from cli.experiments import shadow_panel
from cli.flags import _print_flag
from rollout.counters import ExperimentCounters
from rollout.plan import ShadowGate
from rollout.shadow_gate import shadow_view
from rollout.stores.counters import MemoryCounterBackend
from router.model import parse_flag


def _render(renderable: Any, width: int = 80) -> str:
    console = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    console.file.close()
    return console.export_text()


def _view(gate: ShadowGate | None) -> dict[str, Any]:
    async def counts() -> Any:
        counters = ExperimentCounters(MemoryCounterBackend())
        counters.register_version("bot", 1, {"control": 100.0, "candidate-v2": 0.0}, False, 1.0)
        for i in range(120):
            winner = "b" if i % 3 else "a"  # the candidate, answer B, wins 2 in 3
            counters.count_preference("bot", 1, "control", "candidate-v2", winner)
        counters.count_preference("bot", 1, "candidate-v2", "control", "both_bad")
        return await counters.read("bot")

    return {"shadow": shadow_view(asyncio.run(counts()), "control", gate, "candidate-v2")}


def test_pairs_and_gate_read_in_full_at_80_columns() -> None:
    panel = shadow_panel(_view(ShadowGate(min_pairs=100, min_win_rate=0.45)))
    assert panel is not None
    text = _render(panel)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "candidate-v2 vs control" in text
    assert "121" in text
    assert "80/40/0/1" in text
    assert "66.5% [" in text
    assert "shadow gate: pass" in text
    assert "shadow gate passed: lower bound" in " ".join(text.split())
    assert shadow_panel({"shadow": {"pairs": [], "gate": None}}) is None
    assert shadow_panel({}) is None


def test_flags_show_prints_the_shadow_and_whether_it_applies() -> None:
    data = {
        "key": "bot",
        "control": "control",
        "variants": [
            {"name": "control", "pool": "pa", "weight": 100},
            {"name": "candidate-v2", "pool": "pb", "weight": 0},
        ],
        "shadow": {"variant": "candidate-v2", "share": 0.05, "stream": True,
                   "tokens_per_minute": 200000},
    }  # fmt: skip
    flag = parse_flag(data).model_dump(mode="json")
    console = Console(width=80, record=True, color_system=None, file=io.StringIO())
    _print_flag(console, flag)
    text = " ".join(console.export_text().split())
    assert "shadow: candidate-v2 answers 5% of units unseen" in text
    assert "at most 32 in flight, timeout 60s, streamed, 200,000 tokens/min" in text
    assert "(off" not in text
    console = Console(width=80, record=True, color_system=None, file=io.StringIO())
    _print_flag(console, {**flag, "killed": True})
    assert "(off: the flag is killed)" in " ".join(console.export_text().split())
