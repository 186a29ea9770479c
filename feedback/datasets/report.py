"""What `loopgate datasets build` prints: rows per kind and split, the top drop reasons, and
a loud warning for each empty kind (rich renderables from a manifest; no I/O)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from feedback.datasets.build import SPLITS
from feedback.datasets.rules import KINDS

TOP = 5
# What usually empties a kind, to say next to the warning.
WHY_EMPTY = {
    "dpo": "needs edits, regenerations that were liked, a liked and a disliked answer to one"
    " prompt from two variants, or preferences",
    "kto": "needs thumbs, accept/reject or ratings; ties between users are dropped",
    "sft": "needs accepted answers (sft_kinds) or edits",
}


def top_dropped(doc: dict[str, Any], top: int = TOP) -> list[tuple[str, int]]:
    """The largest drop reasons, largest first (name order among equals)."""
    dropped = doc.get("dropped") or {}
    ranked = sorted(dropped.items(), key=lambda item: (-int(item[1]), item[0]))
    return [(name, int(n)) for name, n in ranked[:top] if n]


def summary(doc: dict[str, Any], out: Path) -> list[RenderableType]:
    """Rows table, drop reasons, warnings and the next step."""
    counts = doc.get("counts") or {}
    rows = Table(title="rows", title_justify="left")
    rows.add_column("kind")
    for split in SPLITS:
        rows.add_column(split, justify="right")
    rows.add_column("total", justify="right")
    for kind in KINDS:
        by_split = counts.get(kind) or {}
        values = [int(by_split.get(split, 0)) for split in SPLITS]
        rows.add_row(kind, *(f"{v:,}" for v in values), f"{sum(values):,}")
    parts: list[RenderableType] = [rows]
    join = doc.get("join") or {}
    parts.append(
        Text(
            f"from {join.get('completions', 0):,} completions and {join.get('feedback', 0):,}"
            f" pieces of feedback ({join.get('unjudged', 0):,} completions had none)"
        )
    )
    dropped = top_dropped(doc)
    if dropped:
        table = Table(title="top drop reasons", title_justify="left")
        table.add_column("reason")
        table.add_column("n", justify="right")
        for name, n in dropped:
            table.add_row(name, f"{n:,}")
        parts.append(table)
    for kind in KINDS:
        by_split = counts.get(kind) or {}
        if not any(int(by_split.get(split, 0)) for split in SPLITS):
            parts.append(Text(f"WARNING: {kind} is empty: it {WHY_EMPTY[kind]}.", style="bold red"))
    kinds_with_rows = {k for k in KINDS if any((counts.get(k) or {}).values())}
    empty = [s for s in doc.get("empty_splits") or [] if s.split("/")[0] in kinds_with_rows]
    if empty:
        parts.append(
            Text(f"empty splits left out of the card's configs: {', '.join(empty)}", style="yellow")
        )
    for note in doc.get("notes") or []:
        parts.append(Text(f"note: {note}", style="yellow"))
    parts.append(Text(f"redaction: {', '.join(doc.get('redaction') or ['regex'])}", style="dim"))
    parts.append(Text(f"wrote {out} ({doc.get('content_hash')})"))
    loadable = [c for c in ("dpo", "kto", "sft") if (counts.get(c) or {}).get("train")]
    if loadable:
        parts.append(Text(f'load: datasets.load_dataset("{out}", "{loadable[0]}")', style="dim"))
    return parts
