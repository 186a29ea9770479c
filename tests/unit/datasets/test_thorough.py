"""The thorough (Presidio) pass: what the issue found unredacted comes out redacted, the
manifest says which pass ran, and recall on the synthetic set beats the regex pass.

Names need a spaCy NER pipeline; none is downloaded here, so the tests train a tiny one on
synthetic sentences (tests/support/pii.py). Its recall holds for that pipeline only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback.datasets.build import BuildConfig, build
from feedback.datasets.export import export
from feedback.datasets.thorough import ThoroughConfig, ThoroughUnavailable, load
from feedback.redact import Redactor
from feedback.schema import to_json
from tests.support.pii import recall, samples, train_tiny_ner
from tests.unit.datasets.events import completion, feedback

pytest.importorskip("presidio_analyzer")
pytest.importorskip("spacy")

ISSUE_TEXT = "Hi, I'm John Smith, I live at 221B Baker Street, London NW1 6XE"
ISSUE_REST = (
    ("I was born on 14/02/1987.", "14/02/1987"),
    ("My passport number is C4J7T2K9X.", "C4J7T2K9X"),
    ("Tel. 030 1234567", "030 1234567"),
    ("Meine Steuer-ID ist 86095742719.", "86095742719"),
)


@pytest.fixture(scope="module")
def tiny_ner(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A spaCy NER pipeline trained here on synthetic sentences (a minute on a busy CPU)."""
    return str(train_tiny_ner(tmp_path_factory.mktemp("ner") / "pipeline"))


def test_the_issue_text_comes_out_redacted(tiny_ner: str) -> None:
    thorough, why_not = load(ThoroughConfig(mode="on", spacy_model=tiny_ner))
    assert thorough is not None
    assert why_not is None
    findings: dict[str, int] = {}
    out = thorough.redact(Redactor().redact(ISSUE_TEXT)[0], findings)
    for piece in ("John", "Smith", "221B", "Baker", "London", "NW1", "6XE"):
        assert piece not in out, out
    assert {"person", "address"} <= set(findings)
    for text, value in ISSUE_REST:
        redacted = thorough.redact(Redactor().redact(text)[0], {})
        assert value not in redacted, redacted
        assert value.replace(" ", "") not in redacted.replace(" ", "")


def test_a_build_runs_the_pass_and_the_manifest_says_so(tiny_ner: str, tmp_path: Path) -> None:
    events = [
        completion("r1", prompt=ISSUE_TEXT, text="Thanks John, noted."),
        feedback("r1", "accept"),
        completion("r2", unit="u2", prompt="My Steuer-ID ist 86095742719.", text="ok"),
        feedback("r2", "accept"),
    ]
    config = BuildConfig(test_fraction=0.0, thorough=ThoroughConfig(spacy_model=tiny_ner))
    doc = export([to_json(e) for e in events], config, tmp_path / "ds", sources=["t"])
    assert doc["redaction"][0] == "regex"
    assert doc["redaction"][1].startswith("presidio + spaCy loopgate_tiny_ner")
    built = build(events, config)
    rows = {row["response_ids"][0]: str(row["messages"]) for row in built.rows[("sft", "train")]}
    for piece in ("John", "Smith", "Baker", "NW1"):
        assert piece not in rows["r1"]
    assert "[PERSON]" in rows["r1"]
    assert "[ADDRESS]" in rows["r1"]
    # A tax id is a national id: unsafe to train on, so r2's KTO and SFT rows are dropped.
    assert "r2" not in rows
    assert built.dropped["unsafe_on_output"] == 2
    assert "86095742719" not in str(built.rows)
    assert "presidio" in (tmp_path / "ds" / "README.md").read_text()


def test_without_a_pipeline_presidio_runs_its_patterns_and_says_so() -> None:
    thorough, _ = load(ThoroughConfig())
    assert thorough is not None
    assert "patterns only" in thorough.label
    assert thorough.redact("Tel. 030 1234567", {}) == "Tel. [PHONE]"


def test_a_missing_pipeline_fails_when_asked_for_and_is_noted_when_auto(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-pipeline")
    with pytest.raises(ThoroughUnavailable, match="no-such-pipeline"):
        load(ThoroughConfig(mode="on", spacy_model=missing))
    config = BuildConfig(thorough=ThoroughConfig(mode="auto", spacy_model=missing))
    built = build([completion("r1"), feedback("r1", "accept")], config)
    assert built.redaction == ["regex"]
    assert "no-such-pipeline" in built.notes[0]
    off = build([], BuildConfig(thorough=ThoroughConfig(mode="off")))
    assert (off.redaction, off.notes) == (["regex"], [])


def test_recall_on_the_synthetic_set(tiny_ner: str) -> None:
    thorough, _ = load(ThoroughConfig(mode="on", spacy_model=tiny_ner))
    assert thorough is not None
    regex = Redactor()
    labelled = samples()
    first = recall(lambda text: regex.redact(text)[0], labelled)
    both = recall(lambda text: thorough.redact(regex.redact(text)[0], {}), labelled)
    for category in first:
        assert both[category] >= first[category], category
    for category in ("address", "date_of_birth", "passport", "tax_id", "phone"):
        assert both[category] >= 0.9, (category, first, both)
    # Addresses need the thorough pass: no regex of the serving path looks for them.
    assert first["address"] < 0.9
    # Names rest on the tiny NER: far above the regex pass's nothing, far from a real model.
    assert first["name"] == 0.0
    assert both["name"] >= 0.7, both


def test_the_cli_fails_early_when_the_pass_is_required_but_cannot_load(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import _register, app

    _register()
    events = tmp_path / "events.jsonl"
    events.write_bytes(to_json(completion("r1")) + b"\n" + to_json(feedback("r1", "accept")))
    missing = str(tmp_path / "no-such-pipeline")
    args = ["datasets", "build", "--jsonl", str(events), "--out", str(tmp_path / "ds")]
    result = CliRunner().invoke(app, [*args, "--thorough", "on", "--spacy-model", missing])
    assert result.exit_code == 1
    assert "thorough redaction pass cannot run" in result.output
    assert not (tmp_path / "ds").exists()
    fine = CliRunner().invoke(app, [*args, "--thorough", "auto", "--spacy-model", missing])
    assert fine.exit_code == 0, fine.output
    assert "note: thorough pass not run" in fine.output
