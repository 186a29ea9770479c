"""The dataset card (README.md): Hugging Face `configs:` for dpo, kto and sft, and the
manifest's provenance, so `load_dataset(dir, "dpo")` works and the data says where it came from.
"""

from __future__ import annotations

from typing import Any

import yaml

from feedback.datasets.build import SPLITS
from feedback.datasets.rules import KINDS

CARD = "README.md"


def data_files(doc: dict[str, Any], kind: str) -> list[dict[str, str]]:
    """The card's files of a kind: non-empty splits only (HF refuses a split with no rows)."""
    files = doc.get("files") or {}
    out: list[dict[str, str]] = []
    for split in SPLITS:
        for fmt in ("parquet", "jsonl"):  # Parquet keeps the column types; JSON lines else
            name = f"{kind}/{split}.{fmt}"
            if name in files and int(files[name]["rows"]) > 0:
                out.append({"split": split, "path": name})
                break
    return out


def configs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One config per kind with rows; the first (DPO when it has rows) is the default."""
    out: list[dict[str, Any]] = []
    for kind in KINDS:
        files = data_files(doc, kind)
        if files:
            out.append({"config_name": kind, "data_files": files})
    if out:
        out[0]["default"] = True
    return out


def card(doc: dict[str, Any]) -> str:
    """README.md text for a built dataset's manifest."""
    front = {"configs": configs(doc), "tags": ["loopgate", "dpo", "kto", "sft", "rlhf"]}
    version = doc.get("code_version") or {}
    counts = doc.get("counts") or {}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        "# Loopgate feedback dataset",
        "",
        "Completions joined with the feedback people gave on them, as TRL's DPO, KTO and SFT",
        "formats, built by `loopgate datasets build` (docs/datasets.md). `manifest.json` holds",
        "every count, rule setting and file hash.",
        "",
        "```python",
        "from datasets import load_dataset",
        'dpo = load_dataset("path/to/this/dir", "dpo")  # or "kto", "sft"',
        "```",
        "",
        "| kind | " + " | ".join(SPLITS) + " |",
        "| --- | " + " | ".join("---:" for _ in SPLITS) + " |",
    ]
    for kind in KINDS:
        by_split = counts.get(kind) or {}
        lines.append(f"| {kind} | " + " | ".join(str(by_split.get(s, 0)) for s in SPLITS) + " |")
    empty = doc.get("empty_splits") or []
    if empty:
        lines += [
            "",
            f"Left out of `configs` because they have no rows: {', '.join(empty)}"
            " (the files exist, with their columns).",
        ]
    weights = doc.get("kto_weights")
    if weights:
        lines += [
            "",
            "KTO: pass `desirable_weight={desirable_weight}` and `undesirable_weight="
            "{undesirable_weight}` to TRL's `KTOConfig` to balance the vote-weighted classes;"
            " the per-row `weight` column is the vote share of the row's label.".format(**weights),
        ]
    lines += [
        "",
        "## Provenance",
        "",
        f"- content hash: `{doc.get('content_hash')}`",
        f"- built at: {doc.get('built_at')}",
        f"- code: loopgate {version.get('package')} @ {version.get('git_commit') or '-'}",
        f"- redaction: {', '.join(doc.get('redaction') or ['regex'])}",
        f"- time range: {(doc.get('time_range') or {}).get('first', '-')} .. "
        f"{(doc.get('time_range') or {}).get('last', '-')}",
        "- sources:",
        *(f"  - `{source}`" for source in doc.get("sources") or []),
        "",
        "Rules and filters:",
        "",
        "```yaml",
        yaml.safe_dump(
            {"filters": doc.get("filters"), **(doc.get("config") or {})}, sort_keys=True
        ).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
