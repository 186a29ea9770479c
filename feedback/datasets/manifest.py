"""manifest.json: what a dataset holds, where it came from, and how to check a rebuild."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.table import Table

from feedback.datasets.build import SPLITS, BuildConfig, Built
from feedback.datasets.rules import KINDS

FORMAT = "loopgate.datasets/1"
MANIFEST = "manifest.json"


def code_version() -> dict[str, str | None]:
    """Package version and, when running from a git checkout, its commit."""
    try:
        version: str | None = metadata.version("loopgate")
    except metadata.PackageNotFoundError:
        version = None
    commit: str | None = None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if done.returncode == 0:
            commit = done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"package": version, "git_commit": commit}


def _tally(built: Built, column: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        counter: Counter[str] = Counter()
        for split in SPLITS:
            for row in built.rows[(kind, split)]:
                counter[str(row.get(column) or "-")] += 1
        out[kind] = dict(sorted(counter.items()))
    return out


def kto_weights(built: Built) -> dict[str, float] | None:
    """TRL KTOConfig class weights that balance the train split's vote-weighted labels.

    TRL weighs classes, not rows: desirable_weight * n_desirable over undesirable_weight *
    n_undesirable should sit in [1, 4/3]; with n counted as the sum of the rows' vote shares
    (`weight`), the smaller class gets the larger weight and the ratio is 1. None when a
    class is empty.
    """
    rows = built.rows[("kto", "train")]
    good = sum(float(r.get("weight") or 1.0) for r in rows if r["label"])
    bad = sum(float(r.get("weight") or 1.0) for r in rows if not r["label"])
    if good <= 0 or bad <= 0:
        return None
    if good >= bad:
        return {"desirable_weight": 1.0, "undesirable_weight": round(good / bad, 4)}
    return {"desirable_weight": round(bad / good, 4), "undesirable_weight": 1.0}


def manifest(
    built: Built,
    config: BuildConfig,
    *,
    sources: Sequence[str],
    files: dict[str, dict[str, object]],
    version: dict[str, str | None],
    built_at: datetime,
) -> dict[str, Any]:
    """The manifest document (content_hash covers rows only, never the build time)."""
    times = [row["time"] for rows in built.rows.values() for row in rows]
    return {
        "format": FORMAT,
        "content_hash": built.content_hash,
        "built_at": built_at.isoformat().replace("+00:00", "Z"),
        "code_version": version,
        "sources": list(sources),
        "counts": {kind: {split: built.count(kind, split) for split in SPLITS} for kind in KINDS},
        "by_rule": _tally(built, "rule"),
        "by_flag": _tally(built, "flag"),
        "by_variant": _tally(built, "variant"),
        "time_range": {"first": min(times), "last": max(times)} if times else None,
        "filters": config.filters.model_dump(mode="json"),
        "config": config.model_dump(mode="json", exclude={"filters"}),
        "join": built.join.as_dict(),
        "dropped": dict(sorted(built.dropped.items())),
        # HF `datasets` refuses a split with no rows: the card leaves these out of `configs`.
        "empty_splits": [
            f"{kind}/{split}" for kind in KINDS for split in SPLITS if not built.count(kind, split)
        ],
        "kto_weights": kto_weights(built),
        # Which redaction passes ran over the output rows (regex; Presidio when it loaded).
        "redaction": list(built.redaction),
        "notes": list(built.notes),
        "files": files,
    }


def _pairs_table(title: str, rows: dict[str, Any], key: str = "what", value: str = "n") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(key)
    table.add_column(value, justify="right")
    for name, count in rows.items():
        table.add_row(str(name), str(count))
    return table


def tables(doc: dict[str, Any]) -> list[Table]:
    """Rich tables describing a manifest, for `loopgate datasets stats`."""
    head = Table(title="dataset", title_justify="left", show_header=False)
    head.add_column("field")
    head.add_column("value")
    version = doc.get("code_version") or {}
    time_range = doc.get("time_range") or {}
    head.add_row("content hash", str(doc.get("content_hash")))
    head.add_row("built at", str(doc.get("built_at")))
    head.add_row("code", f"{version.get('package')} @ {version.get('git_commit') or '-'}")
    head.add_row("sources", "\n".join(doc.get("sources") or []) or "-")
    head.add_row("time range", f"{time_range.get('first', '-')} .. {time_range.get('last', '-')}")
    active = {k: v for k, v in (doc.get("filters") or {}).items() if v is not None}
    head.add_row("filters", ", ".join(f"{k}={v}" for k, v in active.items()) or "none")
    head.add_row("redaction", ", ".join(doc.get("redaction") or ["regex"]))
    for note in doc.get("notes") or []:
        head.add_row("note", str(note))
    weights = doc.get("kto_weights")
    if weights:
        head.add_row("KTO weights", ", ".join(f"{k}={v}" for k, v in weights.items()))
    head.add_row("empty splits", ", ".join(doc.get("empty_splits") or []) or "none")
    counts = Table(title="rows", title_justify="left")
    counts.add_column("kind")
    for split in SPLITS:
        counts.add_column(split, justify="right")
    for kind, by_split in (doc.get("counts") or {}).items():
        counts.add_row(kind, *(str(by_split.get(split, 0)) for split in SPLITS))
    out = [head, counts]
    for section, label in (("by_rule", "rule"), ("by_flag", "flag"), ("by_variant", "variant")):
        table = Table(title=f"rows by {label}", title_justify="left")
        table.add_column("kind")
        table.add_column(label)
        table.add_column("rows", justify="right")
        for kind, counts_by in (doc.get(section) or {}).items():
            for name, count in counts_by.items():
                table.add_row(kind, name, str(count))
        out.append(table)
    out.append(_pairs_table("join", doc.get("join") or {}, "counter"))
    out.append(_pairs_table("dropped", doc.get("dropped") or {}, "reason"))
    return out
