"""Dedupe, contradictions, the split, output redaction, and the written files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from cli import app as cli_app
from feedback.datasets.build import BuildConfig, build, split_of
from feedback.datasets.export import OutputExists, export, load_manifest
from feedback.datasets.external import build_external
from feedback.datasets.join import JoinStats
from feedback.datasets.writers import columns
from feedback.schema import Event, to_json
from tests.unit.datasets.events import completion, feedback


def test_identical_pairs_from_two_units_are_kept_once() -> None:
    events: list[Event] = [
        completion("r1", unit="u1", text="old", at=0),
        feedback("r1", "edit", edited_text="new"),
        completion("r2", unit="u2", text="old", at=5),
        feedback("r2", "edit", edited_text="new", at=12),
    ]
    built = build(events, BuildConfig(test_fraction=0.0))
    (row,) = built.rows[("dpo", "train")]
    assert row["response_ids"] == ["r1"]  # the earliest of the duplicates
    assert built.dropped["dpo_duplicate"] == 1


def test_true_ties_are_dropped_and_majorities_kept() -> None:
    kto: list[Event] = [
        completion("r1", unit="u1", at=0),
        feedback("r1", "thumbs_up"),
        completion("r2", unit="u2", at=1),
        feedback("r2", "thumbs_down"),
    ]
    built = build(kto, BuildConfig(test_fraction=0.0))
    assert built.rows[("kto", "train")] == []
    assert built.dropped["kto_tie"] == 1
    third = [*kto, completion("r3", unit="u3", at=2), feedback("r3", "thumbs_down", at=12)]
    (row,) = build(third, BuildConfig(test_fraction=0.0)).rows[("kto", "train")]
    assert (row["label"], row["votes"], row["votes_against"]) == (False, 2, 1)
    assert row["response_ids"] == ["r1", "r2", "r3"]
    dpo: list[Event] = [
        completion("r1", unit="u1", text="A"),
        feedback("r1", "edit", edited_text="B"),
        completion("r2", unit="u2", text="B"),
        feedback("r2", "edit", edited_text="A"),
    ]
    tied = build(dpo, BuildConfig(test_fraction=0.0))
    assert tied.rows[("dpo", "train")] == []
    assert tied.dropped["dpo_tie"] == 2


def test_split_is_by_unit_hash_and_pairs_never_straddle() -> None:
    units = [f"{i:032x}" for i in range(200)]
    sides = {u: split_of(u, "salt", 0.3) for u in units}
    assert 30 < sum(s == "test" for s in sides.values()) < 90
    assert sides == {u: split_of(u, "salt", 0.3) for u in reversed(units)}
    train_u = next(u for u in units if sides[u] == "train")
    test_u = next(u for u in units if sides[u] == "test")
    events: list[Event] = [
        completion("c1", unit=train_u, variant="control", text="bad"),
        feedback("c1", "thumbs_down"),
        completion("k1", unit=test_u, variant="canary", text="good"),
        feedback("k1", "thumbs_up"),
    ]
    built = build(events, BuildConfig(test_fraction=0.3, split_salt="salt"))
    # Rules run within a split: the two users' answers are never paired.
    assert built.count("dpo", "train") == built.count("dpo", "test") == 0
    assert [r["unit_hashes"] for r in built.rows[("kto", "test")]] == [[test_u]]
    assert [r["unit_hashes"] for r in built.rows[("kto", "train")]] == [[train_u]]


def test_outputs_are_redacted_again_when_events_were_not() -> None:
    leaked = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3"
    events: list[Event] = [
        completion("r1", prompt="mail me at bob@example.com", text="sure"),
        feedback("r1", "accept"),
        completion("r2", prompt="p2", text=f"use the key {leaked}"),
        feedback("r2", "accept"),
    ]
    built = build(events, BuildConfig(test_fraction=0.0))
    (row,) = built.rows[("sft", "train")]
    assert row["messages"][1]["content"] == "mail me at [EMAIL]"
    assert built.dropped["unsafe_on_output"] == 2  # r2's KTO and SFT rows
    assert leaked not in orjson.dumps(list(built.rows.values())).decode()


def _scenario() -> list[Event]:
    return [
        completion("r1", unit="u1", text="old"),
        feedback("r1", "edit", edited_text="new"),
        completion("r2", unit="u2", prompt="p2", text="fine"),
        feedback("r2", "accept"),
    ]


def test_export_writes_every_file_and_a_manifest(tmp_path: Path) -> None:
    lines = [to_json(e) for e in _scenario()]
    doc = export(lines, BuildConfig(test_fraction=0.0), tmp_path / "ds", sources=["test"])
    names = sorted(doc["files"])
    assert names == sorted(
        f"{k}/{s}.{f}"
        for k in ("dpo", "kto", "sft")
        for s in ("train", "test")
        for f in ("jsonl", "parquet")
    )
    assert doc["counts"] == {
        "dpo": {"train": 1, "test": 0},
        "kto": {"train": 1, "test": 0},
        "sft": {"train": 2, "test": 0},
    }
    assert doc["by_rule"]["sft"] == {"accept": 1, "edit": 1}
    assert doc["by_variant"]["dpo"] == {"control": 1}
    assert doc["time_range"]["first"].endswith("Z")
    assert doc["code_version"]["package"] == "0.1.0"
    assert doc["content_hash"].startswith("sha256:")
    first = orjson.loads((tmp_path / "ds" / "dpo" / "train.jsonl").read_bytes().splitlines()[0])
    assert tuple(first) == columns("dpo")
    assert load_manifest(tmp_path / "ds") == doc
    with pytest.raises(OutputExists):
        export(lines, BuildConfig(), tmp_path / "ds", sources=["test"])
    again = export(reversed(lines), BuildConfig(test_fraction=0.0), tmp_path / "ds2", sources=["x"])
    assert again["content_hash"] == doc["content_hash"]


def test_cli_build_and_stats(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(to_json(e) + b"\n" for e in _scenario()))
    out = tmp_path / "ds"
    runner = CliRunner()
    from cli import _register

    _register()
    result = runner.invoke(
        cli_app,
        [
            "datasets",
            "build",
            "--jsonl",
            str(events),
            "--out",
            str(out),
            "--test-fraction",
            "0",
            "--format",
            "jsonl",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "dpo" / "train.jsonl").exists()
    assert not (out / "dpo" / "train.parquet").exists()
    stats = runner.invoke(cli_app, ["datasets", "stats", str(out)], env={"COLUMNS": "200"})
    assert stats.exit_code == 0, stats.output
    doc = load_manifest(out)
    assert doc["content_hash"] in stats.output
    assert "desirable_weight" not in stats.output  # one KTO row: no class to balance
    assert "dpo/test, kto/test, sft/test" in stats.output
    assert "regenerate" not in stats.output
    assert "edit" in stats.output
    missing = runner.invoke(cli_app, ["datasets", "stats", str(tmp_path / "nope")])
    assert missing.exit_code == 1


def test_the_partitioned_build_still_sees_unjudged_next_answers() -> None:
    # a asks to regenerate; b (nobody judged it) is the regenerated answer; c is liked later:
    # no pair, in memory and partitioned alike (b travels as a thread entry).
    events: list[Event] = [
        completion("a", text="first", at=0),
        feedback("a", "regenerate", at=5),
        completion("b", text="second", at=6),
        completion("c", text="third", at=7),
        feedback("c", "thumbs_up", at=9),
    ]
    config = BuildConfig(test_fraction=0.0)
    for parts in (1, 2, 7):
        stats = JoinStats()
        built = build_external([to_json(e) for e in events], config, stats=stats, parts=parts)
        assert built.rows[("dpo", "train")] == [], parts
        assert built.dropped["regenerate_not_liked"] == 1
        assert stats.unjudged == 1
        assert built.rows == build(events, config).rows


def test_cli_build_explains_itself(tmp_path: Path) -> None:
    from cli import _register

    _register()
    events = tmp_path / "events.jsonl"
    scenario: list[Event] = [
        completion("r1", unit="u1", at=0),
        feedback("r1", "thumbs_down"),
        completion("r2", unit="u2", at=1),
        feedback("r2", "thumbs_up"),
        completion("r3", unit="u3", prompt="p3", at=2),
        feedback("r3", "thumbs_down"),
        completion("r4", unit="u4", prompt="p4", at=3),
    ]
    events.write_bytes(b"".join(to_json(e) + b"\n" for e in scenario))
    out = tmp_path / "ds"
    args = ["datasets", "build", "--jsonl", str(events), "--out", str(out), "--test-fraction", "0"]
    runner = CliRunner()
    result = runner.invoke(cli_app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.split()[:4] == ["│", "kto", "│", "1"] for line in lines), result.output
    assert "kto_tie" in result.output  # r1 and r2: one up, one down
    assert "WARNING: dpo is empty" in result.output
    assert "WARNING: sft is empty" in result.output
    assert "WARNING: kto" not in result.output
    assert "4 completions and 3 pieces of feedback (1 completions had none)" in result.output
    again = runner.invoke(cli_app, args)
    assert again.exit_code == 1
    assert "pass --overwrite to replace it" in again.output
    as_json = runner.invoke(cli_app, [*args, "--overwrite", "--json"])
    assert as_json.exit_code == 0, as_json.output
    doc = orjson.loads(as_json.stdout)
    assert doc == load_manifest(out)
    assert doc["counts"]["kto"] == {"train": 1, "test": 0}
    assert doc["dropped"]["kto_tie"] == 1
