"""Builds a tiny random Llama sequence classifier (one label): a reward model for real vLLM.

Same tokenizer and shape as tests/support/tinymodel.py, nothing from a hub. Run with the vLLM
venv's python; torch and transformers are imported only inside build().
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # run as a script by the vLLM venv's python

from tinymodel import CORPUS, RECIPE, _build_tokenizer

SCORER = {"version": 1, "seed": 4321, "num_labels": 1}


def scorer_root(cache: Path) -> Path:
    """The scorer's folder under `cache` for the current recipe."""
    blob = json.dumps([RECIPE, SCORER], sort_keys=True) + CORPUS
    return cache / "models" / f"scorer-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def build(cache: Path) -> Path:
    """Builds the scorer unless already there; returns its folder."""
    root = scorer_root(cache)
    if (root / "config.json").exists():
        return root
    import torch  # type: ignore[import-not-found,unused-ignore]
    from transformers import (  # type: ignore[import-not-found,unused-ignore]
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        tok = _build_tokenizer(work)
        special = RECIPE["special"]
        torch.manual_seed(SCORER["seed"])
        config = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.convert_tokens_to_ids(special["bos"]),
            eos_token_id=tok.convert_tokens_to_ids(special["eos"]),
            pad_token_id=tok.convert_tokens_to_ids(special["eos"]),
            num_labels=SCORER["num_labels"],
            **RECIPE["llama"],
        )
        model = LlamaForSequenceClassification(config).to(torch.float32)
        # A random head is near zero for every text; spread it so texts score apart.
        with torch.no_grad():
            model.score.weight.mul_(50.0)
        model.save_pretrained(str(work), safe_serialization=True)
        try:
            work.rename(root)
        except OSError:
            if not (root / "config.json").exists():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> int:
    """CLI: build into --cache and print the scorer's folder on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(__file__).parents[2] / ".cache")
    args = parser.parse_args(argv)
    print(build(args.cache.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
