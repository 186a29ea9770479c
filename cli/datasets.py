"""`loopgate datasets build | stats`: preference, KTO and SFT datasets from captured events."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer


def _aware(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise typer.BadParameter(f"{text!r} needs a timezone (e.g. 2025-01-01T00:00:00Z)")
    return value


def _set(values: list[str] | None) -> frozenset[str] | None:
    return frozenset(values) if values else None


def register(app: typer.Typer) -> None:
    """Add the `datasets` command group."""
    datasets = typer.Typer(
        help="Build training datasets from completion and feedback events.",
        no_args_is_help=True,
    )
    app.add_typer(datasets, name="datasets")

    @datasets.command()
    def build(
        out: Annotated[Path, typer.Option(help="Directory to write the dataset into.")],
        jsonl: Annotated[
            list[Path] | None, typer.Option(help="Exported event JSON-lines file or directory.")
        ] = None,
        spool: Annotated[list[Path] | None, typer.Option(help="A spool directory.")] = None,
        kafka: Annotated[
            list[str] | None, typer.Option(help="Kafka bootstrap server (host:port).")
        ] = None,
        group: Annotated[str, typer.Option(help="Kafka consumer group.")] = "loopgate-datasets",
        state: Annotated[
            Path | None,
            typer.Option(help="Local event log for Kafka (default var/datasets/<group>)."),
        ] = None,
        config: Annotated[
            Path | None, typer.Option(help="YAML with rule thresholds and split settings.")
        ] = None,
        since: Annotated[str | None, typer.Option(help="Completions from (ISO time).")] = None,
        until: Annotated[str | None, typer.Option(help="Completions before (ISO time).")] = None,
        flag: Annotated[list[str] | None, typer.Option(help="Only these flags.")] = None,
        variant: Annotated[list[str] | None, typer.Option(help="Only these variants.")] = None,
        app_id: Annotated[list[str] | None, typer.Option("--app", help="Only these apps.")] = None,
        kind: Annotated[
            list[str] | None, typer.Option(help="Only these feedback kinds count.")
        ] = None,
        test_fraction: Annotated[
            float | None, typer.Option(help="Share of units in the test split.")
        ] = None,
        fmt: Annotated[
            list[str] | None, typer.Option("--format", help="jsonl and/or parquet (default both).")
        ] = None,
        overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the manifest as JSON instead of tables.")
        ] = False,
        parts: Annotated[
            int, typer.Option(min=1, help="Spill files per stage (memory holds one at a time).")
        ] = 64,
        tmp_dir: Annotated[
            Path | None, typer.Option(help="Where the build spills events (default: system tmp).")
        ] = None,
        thorough: Annotated[
            str | None,
            typer.Option(help="Presidio pass: off, auto (when installed) or on (default auto)."),
        ] = None,
        spacy_model: Annotated[
            str | None,
            typer.Option(help="spaCy NER pipeline for the Presidio pass (package or directory)."),
        ] = None,
        keys: Annotated[str | None, typer.Option(help="Key store of sealed content.")] = None,
    ) -> None:
        """Join events, apply the pairing and labelling rules, write files and a manifest."""
        import orjson
        import yaml
        from rich.console import Console

        from cli.privacy import key_reader_for
        from feedback.datasets.build import BuildConfig
        from feedback.datasets.export import OutputExists, export
        from feedback.datasets.report import summary
        from feedback.datasets.sources import EventLog, KafkaSource, read_jsonl, read_spool
        from feedback.datasets.thorough import ThoroughUnavailable
        from feedback.datasets.writers import FORMATS
        from feedback.privacy import KeyStoreError
        from feedback.privacy.reading import ErasureCounts, open_lines

        if not (jsonl or spool or kafka):
            raise typer.BadParameter("give at least one source: --jsonl, --spool or --kafka")
        raw: dict[str, Any] = (yaml.safe_load(config.read_text()) or {}) if config else {}
        filters = dict(raw.get("filters") or {})
        filters.update(
            {
                key: value
                for key, value in {
                    "since": _aware(since),
                    "until": _aware(until),
                    "flags": _set(flag),
                    "variants": _set(variant),
                    "apps": _set(app_id),
                    "kinds": _set(kind),
                }.items()
                if value is not None
            }
        )
        raw["filters"] = filters
        if test_fraction is not None:
            raw["test_fraction"] = test_fraction
        presidio = dict(raw.get("thorough") or {})
        if thorough is not None:
            if thorough not in ("off", "auto", "on"):
                raise typer.BadParameter(f"--thorough {thorough!r}: choose off, auto or on")
            presidio["mode"] = thorough
        if spacy_model is not None:
            presidio["spacy_model"] = spacy_model
        raw["thorough"] = presidio
        settings = BuildConfig.model_validate(raw)
        for name in fmt or []:
            if name not in FORMATS:
                raise typer.BadParameter(f"--format {name!r}: choose from {', '.join(FORMATS)}")
        formats = [name for name in FORMATS if not fmt or name in fmt]

        console = Console()
        errors = Console(stderr=True)
        streams: list[Iterable[bytes]] = []
        sources: list[str] = []
        for path in jsonl or []:
            streams.append(read_jsonl([path]))
            sources.append(f"jsonl:{path}")
        for path in spool or []:
            streams.append(read_spool(path))
            sources.append(f"spool:{path}")
        if kafka:
            log = EventLog(state or Path("var/datasets") / group)
            pulled = KafkaSource(kafka, group_id=group).pull(log)
            errors.print(f"kafka: {pulled.records} new events into {log.path}")
            streams.append(log.lines())
            sources.append(f"kafka:{','.join(kafka)}#{group}")
        lines: Iterator[bytes] = itertools.chain.from_iterable(streams)
        erasure = ErasureCounts()  # sealed content opened; forgotten units left out
        lines = open_lines(lines, key_reader_for(keys, spool[0] if spool else None), erasure)
        phases = {"read": "read {n:,} event lines", "join": "joined part {n}/" + str(parts),
                  "rules": "rules on part {n}/" + str(parts)}  # fmt: skip
        try:
            with errors.status("reading events…") as status:

                def progress(phase: str, n: int) -> None:
                    status.update(phases[phase].format(n=n))

                doc = export(
                    lines,
                    settings,
                    out,
                    sources=sources,
                    formats=formats,
                    overwrite=overwrite,
                    parts=parts,
                    workdir=tmp_dir,
                    progress=progress,
                )
        except OutputExists as exc:
            errors.print(
                f"[red]{out} already holds a dataset[/red]: pass --overwrite to replace it"
            )
            raise typer.Exit(1) from exc
        except KeyStoreError as exc:
            errors.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
        except ThoroughUnavailable as exc:
            errors.print(f"[red]the thorough redaction pass cannot run[/red]: {exc}")
            raise typer.Exit(1) from exc
        if erasure.erased_events or erasure.unreadable:
            (errors if as_json else console).print(
                f"left out {erasure.erased_events} events of {len(erasure.erased_units)} "
                f"forgotten units; {erasure.unreadable} sealed events did not verify"
            )
        if as_json:
            typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
            return
        for part in summary(doc, out):
            console.print(part)

    @datasets.command()
    def stats(
        directory: Annotated[Path, typer.Argument(help="A built dataset directory.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the raw manifest.")] = False,
    ) -> None:
        """Describe a built dataset from its manifest."""
        import orjson
        from rich.console import Console

        from feedback.datasets.export import load_manifest
        from feedback.datasets.manifest import tables

        try:
            doc = load_manifest(directory)
        except (OSError, ValueError) as exc:
            typer.echo(f"cannot read the manifest in {directory}: {exc}", err=True)
            raise typer.Exit(1) from exc
        if as_json:
            typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
            return
        console = Console()
        for table in tables(doc):
            console.print(table)
