"""The I/O edge of a build: event lines in, dataset files and manifest.json out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from feedback.datasets.build import BuildConfig
from feedback.datasets.card import CARD, card
from feedback.datasets.external import DEFAULT_PARTS, Progress, build_external
from feedback.datasets.join import JoinStats
from feedback.datasets.manifest import MANIFEST, code_version, manifest
from feedback.datasets.writers import FORMATS, Format, write_all


class OutputExists(Exception):
    """The output directory already holds a dataset and overwriting was not asked for."""


def export(
    lines: Iterable[bytes],
    config: BuildConfig,
    out: Path,
    *,
    sources: Sequence[str],
    formats: Sequence[Format] = FORMATS,
    overwrite: bool = False,
    now: datetime | None = None,
    parts: int = DEFAULT_PARTS,
    workdir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build from raw event lines (bounded in memory) and write files, the card, then the
    manifest (written last)."""
    if (out / MANIFEST).exists() and not overwrite:
        raise OutputExists(f"{out} already holds a dataset (pass --overwrite to replace it)")
    stats = JoinStats()
    built = build_external(
        lines, config, stats=stats, parts=parts, workdir=workdir, progress=progress
    )
    out.mkdir(parents=True, exist_ok=True)
    # The manifest goes last: a directory with one is a finished dataset.
    (out / MANIFEST).unlink(missing_ok=True)
    files = write_all(out, built, formats)
    doc = manifest(
        built,
        config,
        sources=sources,
        files=files,
        version=code_version(),
        built_at=now or datetime.now(UTC),
    )
    (out / CARD).write_text(card(doc))
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    tmp.replace(out / MANIFEST)
    return doc


def load_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a built dataset."""
    doc = orjson.loads((directory / MANIFEST).read_bytes())
    if not isinstance(doc, dict):
        raise ValueError(f"{directory / MANIFEST} is not a JSON object")
    return doc
