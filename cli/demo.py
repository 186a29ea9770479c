"""`loopgate demo`: the whole feedback loop on one machine, in a minute or two.

The gateway (embedded defaults, a writable copy of the embedded flags, the controller in
process) in front of two simulated policy versions; a seeded synthetic population chatting
and judging; a live view of the split, the feedback shares and the rollout; a summary at the end.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli._common import CliError, console, fail

if TYPE_CHECKING:
    from rich.console import Group
    from rich.text import Text

FLAG = "support-bot"

# P(thumbs up) per variant in each scenario: the canary (policy-b) better, worse, or erroring.
SCENARIOS: dict[str, dict[str, Any]] = {
    "better": {"like": {"control": 0.6, "canary": 0.8}, "canary_error_rate": 0.0},
    "worse": {"like": {"control": 0.7, "canary": 0.4}, "canary_error_rate": 0.0},
    "erroring": {"like": {"control": 0.65, "canary": 0.65}, "canary_error_rate": 0.25},
}


def demo_plan(interval: float) -> dict[str, Any]:
    """A plan sized for a demo: big steps, small samples, short steps."""
    return {
        "flag": FLAG,
        "control": "control",
        "canary": "canary",
        "steps": [10, 25, 50, 100],
        "min_duration_s": max(3.0, 2 * interval),
        "min_exposures": 30,
        "min_feedback": 40,
        "min_outcomes": 5,
        "min_guardrail_sample": 30,
        "tau": 0.1,
        "guardrails": [
            {"metric": "error_rate", "max_relative_increase": 0.5, "absolute_slack": 0.02},
            {"metric": "latency_p95", "max_relative_increase": 1.0, "absolute_slack": 0.1},
            {"metric": "thumbs_down_share", "max_relative_increase": 0.3, "absolute_slack": 0.05},
        ],
    }


def demo_config(
    folder: Path, port: int, token: str, scenario: str, interval: float, seed: int
) -> dict[str, Any]:
    """The gateway config: embedded pools with fast sims, writable flags, in-process controller."""
    import yaml

    from gateway.settings import DEFAULT_CONFIG
    from router.config import DEFAULT_FLAGS_FILE

    base: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text())
    flags_path = folder / "flags.yaml"
    shutil.copyfile(DEFAULT_FLAGS_FILE, flags_path)
    for i, name in enumerate(sorted(base["pools"])):
        sim = dict(base["pools"][name].get("sim") or {})
        # Short answers keep the demo quick; the same speed for both keeps latency honest.
        sim.update({"ttft": 0.02, "itl": 0.002, "output_tokens": 24, "seed": seed + i})
        if name == "policy-b":
            sim["error_rate"] = SCENARIOS[scenario]["canary_error_rate"]
        base["pools"][name]["sim"] = sim
    base.update(
        {
            "instance": "loopgate-demo",
            "server": {"host": "127.0.0.1", "port": port},
            "flags": {"source": "file", "path": str(flags_path), "admin_token": token,
                      "reload_interval": 0.5},
            "ids": {"keys": [secrets.token_urlsafe(32)], "max_age_s": 3600},
            "events": {"spool": {"dir": str(folder / "spool")}},
            "experiments": {
                "plans_path": str(folder / "rollout.json"),
                "plans": [demo_plan(interval)],
                "controller": {"in_process": True, "interval_s": interval},
            },
        }
    )  # fmt: skip
    return base


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spool_summary(spool: Path) -> Counter[str]:
    """Events in the spool by type."""
    counts: Counter[str] = Counter()
    for path in sorted(spool.rglob("*")):
        if not path.is_file():
            continue
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                counts[json.loads(line).get("type", "?")] += 1
    return counts


class DemoGateway:
    """`loopgate serve --simulate` as a subprocess, its output in a log file."""

    def __init__(self, config_path: Path, log_path: Path, port: int) -> None:
        self.config_path, self.log_path, self.port = config_path, log_path, port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_s: float = 60.0) -> None:
        """Start it and wait until /healthz answers (blocking: run it in a thread)."""
        import urllib.request

        cmd = [sys.executable, "-m", "cli", "serve", "--simulate",
               "--config", str(self.config_path), "--log-level", "warning"]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CliError(f"the gateway exited; see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/healthz", timeout=0.5) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.2)
        raise CliError(f"the gateway did not start in {wait_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM (it drains, stops its simulators and flushes events), then wait."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _header(scenario: str, like: dict[str, float], elapsed: float, duration: float,
            rate: float) -> Text:  # fmt: skip
    from rich.text import Text

    text = Text()
    text.append("Loopgate demo", style="bold green")
    text.append(f"   scenario: {scenario}", style="bold")
    prefs = ", ".join(f"{k} {100 * v:.0f}%" for k, v in like.items())
    text.append(f"   users like: {prefs}\n", style="dim")
    text.append(f"{elapsed:.0f}/{duration:.0f} s   {rate:.1f} req/s")
    return text


async def _demo(
    scenario: str,
    duration: float,
    interval: float,
    seed: int,
    keep: Path | None,
    stay: bool = False,
) -> int:
    import asyncio

    import yaml
    from rich.console import Group
    from rich.live import Live
    from rich.panel import Panel
    from rich.text import Text

    from cli.admin import AdminClient
    from cli.experiments import experiment_panel
    from cli.rollout import rollout_panel
    from sim.population import Population, PopulationConfig

    out = console()
    folder = keep or Path(tempfile.mkdtemp(prefix="loopgate-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    token, port = secrets.token_urlsafe(16), _free_port()
    config = demo_config(folder, port, token, scenario, interval, seed)
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    gateway = DemoGateway(config_path, folder / "gateway.log", port)
    like = SCENARIOS[scenario]["like"]
    out.print(f"[dim]starting the gateway and two simulated policy versions ({folder})…[/]")
    await asyncio.to_thread(gateway.start)
    population = Population(gateway.url, PopulationConfig(like=like, seed=seed))
    stop = asyncio.Event()
    task = asyncio.create_task(population.run(stop), name="population")
    started = time.monotonic()
    finished_at: float | None = None
    exp: dict[str, Any] | None = None
    ro: dict[str, Any] | None = None

    admin = AdminClient(gateway.url, token, "demo", timeout=10)

    async def fetch() -> None:
        nonlocal exp, ro
        with contextlib.suppress(CliError):
            exp = await asyncio.to_thread(admin.get, f"/admin/experiments/{FLAG}")
            ro = await asyncio.to_thread(admin.get, f"/admin/experiments/{FLAG}/rollout")

    def render() -> Group:
        parts: list[Any] = [_header(scenario, like, time.monotonic() - started, duration,
                                    population.stats.rate())]  # fmt: skip
        width = out.width
        if exp is not None:
            parts.append(experiment_panel(exp, width))
        if ro is not None:
            inner = rollout_panel(ro, width - 4, history=8)  # the panel's border and padding
            parts.append(Panel(inner, title="rollout", expand=True))
        return Group(*parts)

    try:
        with Live(render(), console=out, refresh_per_second=4, transient=False) as view:
            while time.monotonic() - started < duration:
                await asyncio.sleep(1.0)
                if task.done():
                    break
                await fetch()
                view.update(render())
                status = ((ro or {}).get("state") or {}).get("status")
                if status in ("promoted", "rolled_back") and finished_at is None:
                    finished_at = time.monotonic()
                # A few seconds of traffic after the decision shows the new split in effect.
                if finished_at is not None and time.monotonic() - finished_at > 5:
                    break
            await fetch()
            view.update(render())
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=35)
        if stay:
            await _stay_up(gateway.url, token)
        await asyncio.to_thread(gateway.stop)
    state = (ro or {}).get("state") or {}
    status = state.get("status", "not started")
    events = spool_summary(folder / "spool")
    total = sum(population.stats.requests.values())
    summary = Text()
    summary.append("\nsummary: ", style="bold")
    style = {"promoted": "bold green", "rolled_back": "bold red"}.get(status, "yellow")
    summary.append(f"rollout {status}", style=style)
    summary.append(f" with the canary at {state.get('share', 0) or 0:g}%;"
                   f" {total} chats, {sum(population.stats.feedback.values())} pieces of feedback"
                   f" in {time.monotonic() - started:.0f} s\n")  # fmt: skip
    for entry in state.get("history", []):
        if entry["action"] in ("rollback", "promote"):
            summary.append(f"  why: {'; '.join(entry['reasons'])}\n")
    summary.append(
        f"events ({', '.join(f'{n} {k}' for k, n in sorted(events.items())) or 'none'}) "
        f"in the spool: {folder / 'spool'}\n"
    )
    summary.append(f"flag changes (audit events, who=controller) are among them; gateway log: "
                   f"{folder / 'gateway.log'}\n", style="dim")  # fmt: skip
    summary.append("datasets from them:", style="dim")
    out.print(summary)
    # On a line of its own and never wrapped, so that it can be copied as it is.
    out.print(
        f"loopgate datasets build --spool {folder / 'spool'} --out dataset/",
        soft_wrap=True, highlight=False, markup=False,
    )  # fmt: skip
    return 0 if status in ("promoted", "rolled_back") else 1


async def _stay_up(url: str, token: str) -> None:
    """Leave the gateway and its console up on the demo's data until Ctrl-C."""
    import asyncio

    console().print(
        f"\n[bold]console:[/] {url}/console  [bold]sign in with:[/] {token}\n"
        "[dim]the gateway and the console stay up on the demo's data; Ctrl-C stops them[/]"
    )
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


def register(app: typer.Typer) -> None:
    """Add `loopgate demo`."""

    @app.command()
    def demo(
        scenario: Annotated[
            str, typer.Option(help="better | worse | erroring: how the canary (policy-b) does")
        ] = "better",
        duration: Annotated[float, typer.Option(help="Stop after this many seconds")] = 90.0,
        interval: Annotated[float, typer.Option(help="Controller interval (seconds)")] = 2.0,
        seed: Annotated[int, typer.Option(help="Population and simulator seed")] = 7,
        folder: Annotated[
            Path | None, typer.Option(help="Keep config, spool and logs here (default: a temp dir)")
        ] = None,
        stay: Annotated[
            bool,
            typer.Option(help="Afterwards, keep the gateway and console up until Ctrl-C"),
        ] = False,
    ) -> None:
        """The feedback loop end to end: gateway, two policy versions, users, controller."""
        import asyncio

        if scenario not in SCENARIOS:
            raise fail(CliError(f"scenario must be one of {', '.join(SCENARIOS)}", code=2))
        try:
            code = asyncio.run(_demo(scenario, duration, interval, seed, folder, stay))
        except CliError as exc:
            raise fail(exc) from exc
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        raise typer.Exit(code)
