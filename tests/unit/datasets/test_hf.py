"""The Hugging Face `datasets` library loads every written file with the expected columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback.datasets.build import BuildConfig
from feedback.datasets.export import export
from feedback.datasets.rules import Kind
from feedback.datasets.writers import columns
from feedback.schema import to_json
from tests.unit.datasets.events import completion, feedback

hf = pytest.importorskip("datasets")


def test_every_file_loads_with_its_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    events = [
        completion("r1", unit="u1", text="old"),
        feedback("r1", "edit", edited_text="new"),
        completion("r2", unit="u2", prompt="p2", text="fine"),
        feedback("r2", "accept"),
        completion("r3", unit="u3", prompt="p3", text="nope"),
        feedback("r3", "thumbs_down"),
    ]
    out = tmp_path / "ds"
    # Every unit in train, then every unit in test: both splits of every kind get rows.
    for split, fraction in (("train", 0.0), ("test", 1.0)):
        export(
            [to_json(e) for e in events],
            BuildConfig(test_fraction=fraction),
            out / split,
            sources=["test"],
        )
    cases: list[tuple[Kind, int]] = [("dpo", 1), ("kto", 2), ("sft", 2)]
    for kind, rows in cases:
        for split in ("train", "test"):
            for fmt, builder in (("jsonl", "json"), ("parquet", "parquet")):
                path = out / split / kind / f"{split}.{fmt}"
                loaded = hf.load_dataset(
                    builder, data_files={split: str(path)}, cache_dir=str(tmp_path / "cache")
                )[split]
                assert loaded.column_names == list(columns(kind)), path
                assert loaded.num_rows == rows, path
                first = loaded[0]
                if kind == "dpo":
                    assert first["chosen"] == [{"role": "assistant", "content": "new"}]
                    assert first["prompt"][-1]["role"] == "user"
                if kind == "kto":
                    assert isinstance(first["label"], bool)
                if kind == "sft":
                    assert first["messages"][-1]["role"] == "assistant"


def test_the_card_loads_each_kind_by_name_and_leaves_out_empty_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    events = [
        completion("r1", unit="u1", text="old"),
        feedback("r1", "edit", edited_text="new"),
        completion("r2", unit="u2", prompt="p2", text="fine"),
        feedback("r2", "thumbs_up"),
    ]
    out = tmp_path / "ds"
    # Every unit in train: every test split is empty, and no answer was accepted but r1's
    # edit gives one SFT row.
    doc = export([to_json(e) for e in events], BuildConfig(test_fraction=0.0), out, sources=["t"])
    assert doc["empty_splits"] == ["dpo/test", "kto/test", "sft/test"]
    card = (out / "README.md").read_text()
    assert doc["content_hash"] in card
    assert "sources:\n  - `t`" in card
    for kind, rows in (("dpo", 1), ("kto", 1), ("sft", 1)):
        loaded = hf.load_dataset(str(out), kind, cache_dir=str(tmp_path / "cache"))
        assert list(loaded) == ["train"]
        assert loaded["train"].num_rows == rows
        assert loaded["train"].column_names == list(columns(kind))
    default = hf.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert default["train"].column_names == list(columns("dpo"))
    # A kind with no rows at all is not a config: loading it names the ones there are.
    only_kto = tmp_path / "kto-only"
    export([to_json(e) for e in events[2:]], BuildConfig(test_fraction=0.0), only_kto, sources=[])
    assert "config_name: kto" in (only_kto / "README.md").read_text()
    assert "config_name: dpo" not in (only_kto / "README.md").read_text()
    with pytest.raises(ValueError, match="kto"):
        hf.load_dataset(str(only_kto), "dpo", cache_dir=str(tmp_path / "cache"))
