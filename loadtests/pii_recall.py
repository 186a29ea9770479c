"""Recall of the two redaction passes per PII category, on the synthetic labelled set.

    PYTHONPATH=. .venv/bin/python loadtests/pii_recall.py [--per-category 60] [--ner DIR]

The regex pass is feedback/redact.py as it is; the thorough pass is the regex pass then
Presidio (feedback/datasets/thorough.py). Names and places need a spaCy NER pipeline: by
default a tiny one is trained here on synthetic sentences (tests/support/pii.py), so the
name recall printed holds for that pipeline only; pass --ner to measure an installed one.
The last line counts the demo's 752 clean prompts that each pass changed (false positives).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from feedback.datasets.thorough import ThoroughConfig, load
from feedback.redact import Redactor
from sim.population import prompts
from tests.support.pii import recall, samples, train_tiny_ner


def main() -> None:
    """Print the recall table (markdown) for both passes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=60)
    parser.add_argument("--ner", help="a spaCy pipeline (package or directory)")
    args = parser.parse_args()
    labelled = samples(per_category=args.per_category)
    regex = Redactor()
    with tempfile.TemporaryDirectory() as scratch:
        ner = args.ner
        if ner is None:
            started = time.perf_counter()
            ner = str(train_tiny_ner(Path(scratch) / "tiny-ner"))
            print(f"trained the tiny NER in {time.perf_counter() - started:.0f} s")
        thorough, why_not = load(ThoroughConfig(mode="on", spacy_model=ner))
        assert thorough is not None, why_not

        def first(text: str) -> str:
            return regex.redact(text)[0]

        def both(text: str) -> str:
            return thorough.redact(first(text), {})

        started = time.perf_counter()
        a = recall(first, labelled)
        regex_s = time.perf_counter() - started
        started = time.perf_counter()
        b = recall(both, labelled)
        both_s = time.perf_counter() - started
        clean = prompts()
        changed = (sum(first(p) != p for p in clean), sum(both(p) != p for p in clean))
    print(f"{len(labelled)} labelled texts; thorough pass: {thorough.label}")
    print()
    print("| category | n | regex | regex + Presidio |")
    print("| --- | ---: | ---: | ---: |")
    for category in a:
        n = sum(s.category == category for s in labelled)
        print(f"| {category} | {n} | {a[category]:.2f} | {b[category]:.2f} |")
    print(f"| clean demo prompts changed | {len(clean)} | {changed[0]} | {changed[1]} |")
    print()
    per_text = 1e3 / len(labelled)
    print(f"time per text: regex {regex_s * per_text:.2f} ms, regex + Presidio "
          f"{both_s * per_text:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
