"""`loopgate sim`: a vLLM simulator to put behind the gateway in demos, load tests and tests."""

from __future__ import annotations

from typing import Annotated

import typer


def _parse_adapters(specs: list[str]) -> dict[str, str]:
    """`NAME` or `NAME=STYLE` per --lora option; an adapter without a style is formal."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, _, style = spec.partition("=")
        if not name:
            raise typer.BadParameter(f"{spec!r}: expected NAME or NAME=STYLE", param_hint="--lora")
        adapters[name] = style or "formal"
    return adapters


def _parse_terms(specs: list[str]) -> dict[str, float]:
    terms: dict[str, float] = {}
    for spec in specs:
        term, _, weight = spec.rpartition("=")
        try:
            terms[term] = float(weight)
        except ValueError:
            raise typer.BadParameter(
                f"{spec!r}: expected TERM=WEIGHT", param_hint="--reward-term"
            ) from None
        if not term:
            raise typer.BadParameter(f"{spec!r}: expected TERM=WEIGHT", param_hint="--reward-term")
    return terms


def register(app: typer.Typer) -> None:
    """Add the sim command."""
    # Options left out take the profile's defaults (sim/profile.py), so the CLI and a pool's
    # `sim` section agree; the profile is not imported here, to keep `--help` quick.

    @app.command()
    def sim(
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        model: Annotated[str, typer.Option(help="Served model name.")] = "sim-model",
        style: Annotated[
            str | None,
            typer.Option(
                help="Voice of the answers: concise, friendly, formal, verbose.", show_default=False
            ),
        ] = None,
        ttft: Annotated[
            float | None, typer.Option(help="Time to first token, seconds.", show_default=False)
        ] = None,
        itl: Annotated[
            float | None, typer.Option(help="Inter-token latency, seconds.", show_default=False)
        ] = None,
        output_tokens: Annotated[
            int | None, typer.Option(help="Typical answer length.", show_default=False)
        ] = None,
        error_rate: Annotated[
            float | None, typer.Option(help="Share of requests answered 500.", show_default=False)
        ] = None,
        midstream_error_rate: Annotated[
            float | None,
            typer.Option(help="Share of streams cut off after a few chunks.", show_default=False),
        ] = None,
        stall_rate: Annotated[
            float | None, typer.Option(help="Share of requests never answered.", show_default=False)
        ] = None,
        max_num_seqs: Annotated[
            int | None, typer.Option(help="Requests run at once; more wait.", show_default=False)
        ] = None,
        max_model_len: Annotated[
            int | None, typer.Option(help="Context length in tokens.", show_default=False)
        ] = None,
        jitter: Annotated[
            float | None, typer.Option(help="Relative spread of latencies.", show_default=False)
        ] = None,
        seed: Annotated[
            int | None, typer.Option(help="Seed of answers, faults and jitter.", show_default=False)
        ] = None,
        lora: Annotated[
            list[str] | None,
            typer.Option(help="A LoRA adapter served too, NAME or NAME=STYLE; repeatable."),
        ] = None,
        history: Annotated[int, typer.Option(help="Requests kept for /sim/requests.")] = 256,
        reward_term: Annotated[
            list[str] | None,
            typer.Option(help="/pooling rewards TERM by WEIGHT per use, TERM=WEIGHT; repeatable."),
        ] = None,
        judge_position_bias: Annotated[
            float | None,
            typer.Option(help="As a pairwise judge, favour the answer shown first by this much."),
        ] = None,
    ) -> None:
        """Run a vLLM simulator: vLLM's OpenAI API, latency profile, faults and /metrics."""
        # Imported here so other commands do not pay for aiohttp and pydantic at start.
        from pydantic import ValidationError

        from sim.profile import SimProfile
        from sim.server import run_sim

        given = {
            "style": style,
            "ttft": ttft,
            "itl": itl,
            "output_tokens": output_tokens,
            "error_rate": error_rate,
            "midstream_error_rate": midstream_error_rate,
            "stall_rate": stall_rate,
            "max_num_seqs": max_num_seqs,
            "max_model_len": max_model_len,
            "jitter": jitter,
            "seed": seed,
            "reward_terms": _parse_terms(reward_term or []) or None,
            "judge_position_bias": judge_position_bias,
        }
        try:
            profile = SimProfile(**{k: v for k, v in given.items() if v is not None})
            adapters = _parse_adapters(lora or [])
            # Check adapter styles now so a typo is reported before the port is bound.
            for adapter_style in adapters.values():
                SimProfile(style=adapter_style)
        except ValidationError as err:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            typer.echo(f"loopgate sim: invalid option: {detail}", err=True)
            raise typer.Exit(2) from None
        run_sim(host, port, profile, model, adapters, history)
