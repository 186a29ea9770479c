"""Write dataset rows as JSON lines and Parquet, one file per kind and split."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from feedback.datasets.build import SPLITS, Built, Row
from feedback.datasets.rules import KINDS, Kind

Format = Literal["jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("jsonl", "parquet")
# TRL's columns for each kind; the provenance columns follow in every file.
TRL_COLUMNS: dict[Kind, tuple[str, ...]] = {
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "sft": ("messages",),
}
PROVENANCE_COLUMNS = (
    "rule",
    "flag",
    "variant",
    "app",
    "time",
    "unit_hashes",
    "response_ids",
    "source",
    "votes",
    "votes_against",
    "weight",
)


def columns(kind: Kind) -> tuple[str, ...]:
    """Every column of a file of this kind, in order."""
    extra = ("rejected_variant",) if kind == "dpo" else ()
    return (*TRL_COLUMNS[kind], *PROVENANCE_COLUMNS, *extra)


def _arrow_schema(kind: Kind) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped]  # no stubs shipped

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    types = {
        "prompt": messages,
        "chosen": messages,
        "rejected": messages,
        "completion": messages,
        "messages": messages,
        "label": pa.bool_(),
        "unit_hashes": pa.list_(pa.string()),
        "response_ids": pa.list_(pa.string()),
        "votes": pa.int64(),
        "votes_against": pa.int64(),
        "weight": pa.float64(),
    }
    return pa.schema([(name, types.get(name, pa.string())) for name in columns(kind)])


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def write_jsonl(path: Path, kind: Kind, rows: Sequence[Row]) -> None:
    """One row per line, columns in file order."""
    names = columns(kind)
    data = b"".join(orjson.dumps({name: row.get(name) for name in names}) + b"\n" for row in rows)
    _fsync_write(path, data)


def write_parquet(path: Path, kind: Kind, rows: Sequence[Row]) -> None:
    """A Parquet file with a fixed schema per kind (an empty split still has its columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    schema = _arrow_schema(kind)
    table = pa.Table.from_pylist([{n: row.get(n) for n in schema.names} for row in rows], schema)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def file_name(kind: Kind, split: str, fmt: Format) -> str:
    """Path of one file under the output directory."""
    return f"{kind}/{split}.{fmt}"


def write_all(out: Path, built: Built, formats: Sequence[Format]) -> dict[str, dict[str, object]]:
    """Every (kind, split, format) file; returns name -> {rows, bytes, sha256}."""
    files: dict[str, dict[str, object]] = {}
    for kind in KINDS:
        (out / kind).mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            rows = built.rows[(kind, split)]
            for fmt in formats:
                name = file_name(kind, split, fmt)
                path = out / name
                if fmt == "jsonl":
                    write_jsonl(path, kind, rows)
                else:
                    write_parquet(path, kind, rows)
                data = path.read_bytes()
                files[name] = {
                    "rows": len(rows),
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
    return files
