"""What the CLI prints and parses, without a gateway: layouts by terminal width, times, ids."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from rich.console import Console

from cli._common import parse_time, short_id
from cli.experiments import experiment_panel
from cli.flags import traffic
from cli.rollout import arms, parse_steps, plan_effect, rollout_panel
from rollout.counters import ExperimentCounters
from rollout.plan import RolloutPlan
from rollout.service import experiment_view
from rollout.stores.counters import MemoryCounterBackend
from tests.unit.router.conftest import flag_data

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _view(variants: dict[str, float], like: dict[str, float]) -> dict[str, Any]:
    """An experiment view from real counters: 600 users split by the weights, thumbs each."""

    async def counts() -> Any:
        counters = ExperimentCounters(MemoryCounterBackend(), clock=lambda: 1_000.0)
        counters.register_version("support-bot", 1, variants, False, 900.0)
        rng = random.Random(3)
        names, weights = list(variants), list(variants.values())
        for i in range(600):
            name = rng.choices(names, weights)[0]
            counters.count_exchange("support-bot", 1, name, f"u{i}", "ok", 0.2, 0.05)
            kind = "thumbs_up" if rng.random() < like[name] else "thumbs_down"
            counters.count_feedback("support-bot", 1, name, kind, None)
        await counters.flush()
        return await counters.read("support-bot")

    plan = RolloutPlan(flag="support-bot", control="control", canary="canary-long-name")
    return experiment_view(asyncio.run(counts()), plan, None, 1_000.0, planned=False)


def _render(renderable: Any, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    console.file.close()
    return console.export_text().splitlines()


TWO = {"control": 50.0, "canary-long-name": 50.0}
LIKE = {"control": 0.5, "canary-long-name": 0.7, "third": 0.5, "fourth": 0.5}


@pytest.mark.parametrize("width", [80, 100, 200])
def test_experiment_numbers_read_in_full_at_any_width(width: int) -> None:
    view = _view(TWO, LIKE)
    lines = _render(experiment_panel(view, width), width)
    text = "\n".join(lines)
    assert all(len(line) <= width for line in lines)
    assert "…" not in text  # nothing cut to an ellipsis
    canary = next(v for v in view["report"]["variants"] if v["name"] == "canary-long-name")
    cs = canary["sequential"]["confidence_sequence"]
    shown = f"{100 * cs['estimate']:+.1f} pp [{100 * cs['low']:+.1f}, {100 * cs['high']:+.1f}]"
    for expected in ("control", "canary-long-name", shown, "95% CS", "95% CI", "fixed-sample"):
        assert expected in text, text
    assert f"{canary['sequential']['p_value']:.3g}" in text


def test_wide_terminal_gets_one_row_per_variant_narrow_one_column_per_variant() -> None:
    view = _view(TWO, LIKE)
    wide = _render(experiment_panel(view, 200), 200)
    narrow = _render(experiment_panel(view, 80), 80)
    # Wide: a header row naming every number; narrow: the numbers are the rows.
    assert any("exposures" in line and "regens" in line for line in wide)
    assert not any("exposures" in line and "regens" in line for line in narrow)
    assert any(line.lstrip("│ ").startswith("exposures") for line in narrow)


def test_four_variants_at_80_columns_are_stacked_and_complete() -> None:
    view = _view({"control": 40.0, "canary-long-name": 20.0, "third": 20.0, "fourth": 20.0}, LIKE)
    lines = _render(experiment_panel(view, 80), 80)
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert "…" not in text
    for name in ("control", "canary-long-name", "third", "fourth"):
        assert name in text


def _rollout_doc(entries: int) -> dict[str, Any]:
    plan = RolloutPlan(flag="support-bot", control="control", canary="canary")
    reasons = ["3 guardrails hold", "primary metric: p = 0.15", "step passed: advance"]
    history = [
        {"time": 1_000.0 + i, "action": "advance", "from_share": 10.0, "to_share": 25.0,
         "flag_version": 3 + i, "p_value": 0.15, "reasons": reasons}
        for i in range(entries)
    ]  # fmt: skip
    state = {"status": "running", "step": 1, "share": 25.0, "history": history,
             "last_decision": "hold", "last_reasons": reasons, "checked_at": 1_000.0}  # fmt: skip
    return {"flag": "support-bot", "plan": plan.model_dump(mode="json"), "state": state}


@pytest.mark.parametrize("width", [80, 160])
def test_rollout_history_reads_in_full(width: int) -> None:
    lines = _render(rollout_panel(_rollout_doc(3), width), width)
    text = " ".join(" ".join(line.split()) for line in lines)
    assert all(len(line) <= width for line in lines)
    assert "…" not in text
    assert "3 guardrails hold; primary metric: p = 0.15; step passed: advance" in text


def test_parse_time_relative_and_absolute() -> None:
    assert parse_time("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_time("30m", NOW) == NOW - timedelta(minutes=30)
    assert parse_time("7d", NOW) == NOW - timedelta(days=7)
    assert parse_time("2w", NOW) == NOW - timedelta(weeks=2)
    assert parse_time("2025-01-31", NOW) == datetime(2025, 1, 31, tzinfo=UTC)
    assert parse_time("2025-01-31T08:00+02:00", NOW) == datetime(2025, 1, 31, 6, tzinfo=UTC)
    assert parse_time("2025-01-31T08:00:00Z", NOW) == datetime(2025, 1, 31, 8, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "24", "h", "-3h", "2025-13-01", ""])
def test_parse_time_refuses_the_rest_cleanly(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="neither a time ago"):
        parse_time(text, NOW)


def test_short_id_keeps_the_distinguishing_part() -> None:
    a = "lg1.eyJmIjoic3VwcG9ydC1ib3QiLCJ2IjoiY2FuYXJ5In0.Abc123XyZ-7890qwertyUIOP"
    b = "lg1.eyJmIjoic3VwcG9ydC1ib3QiLCJ2IjoiY2FuYXJ5In0.Zzz999XyZ-7890qwertyUIOQ"
    assert short_id(a) != short_id(b)
    assert short_id(a) == "lg1…qwertyUIOP"
    assert "eyJmIjoi" not in short_id(a)
    assert short_id("chatcmpl-123") == "chatcmpl-123"


def test_parse_steps() -> None:
    assert parse_steps("1,5, 25,100") == [1.0, 5.0, 25.0, 100.0]
    assert parse_steps("10%,100%") == [10.0, 100.0]
    for bad, message in (("abc", "'abc' is not a number"), ("10,,100", "empty step"),
                         ("10,", "empty step")):  # fmt: skip
        with pytest.raises(typer.BadParameter, match=message):
            parse_steps(bad)


def test_flag_traffic_follows_kill_and_disable() -> None:
    live = {**flag_data(), "killed": False, "enabled": True}
    assert traffic(live) == "control 90%, canary 10%"
    assert traffic({**live, "killed": True}) == "all to control"
    assert traffic({**live, "enabled": False, "default": "canary"}) == "all to canary"


def test_plan_effect_says_when_a_live_share_goes_down() -> None:
    flag = {**flag_data(), "killed": False, "enabled": True}
    flag["variants"][0]["weight"], flag["variants"][1]["weight"] = 80, 20
    plan = RolloutPlan(flag="support-bot", **arms(flag, None), steps=(5, 25, 100))
    effect = plan_effect("support-bot", plan, flag, None)
    assert (effect["canary_share_now"], effect["canary_share_next"]) == (20.0, 5.0)
    assert effect["lowers_live_share"]
    raised = plan.model_copy(update={"steps": (25.0, 100.0)})
    assert not plan_effect("support-bot", raised, flag, None)["lowers_live_share"]
    killed = plan_effect("support-bot", plan, {**flag, "killed": True}, None)
    assert killed["canary_share_now"] == 0.0
    assert not killed["lowers_live_share"]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_registering_every_command_imports_no_server_code() -> None:
    # What `loopgate --help` loads: the commands, not the gateway, pydantic or the clients.
    done = _python(
        "import sys, cli; cli._register(); "
        "heavy = {'fastapi', 'uvicorn', 'pydantic', 'gateway', 'aiohttp', 'openai', 'kafka', "
        "'redis', 'feedback', 'rollout', 'router', 'sim', 'yaml', 'urllib.request'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _loopgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_version() -> None:
    from importlib.metadata import version

    done = _loopgate("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"loopgate {version('loopgate')}"


def test_shell_completion_completes_commands_and_options() -> None:
    env = {"_LOOPGATE_COMPLETE": "complete_bash", "COMP_WORDS": "loopgate fl", "COMP_CWORD": "1"}
    done = _loopgate(env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["flags"]
    env = {**env, "COMP_WORDS": "loopgate rollout set x --dr", "COMP_CWORD": "4"}
    assert _loopgate(env=env).stdout.split() == ["--dry-run"]
    shown = _loopgate("--show-completion", "bash")
    assert "_LOOPGATE_COMPLETE" in shown.stdout
