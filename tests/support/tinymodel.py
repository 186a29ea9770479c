"""Builds a tiny random Llama, its tokenizer and a LoRA adapter for real-vLLM tests.

Run with the vLLM venv's python (scripts/vllm-env.sh); importable from the gateway venv too,
since torch and friends are imported only inside build(). Nothing can be downloaded from a
model hub here, so everything, tokenizer included, is made from the recipe below.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# Changing anything here changes the cache key, so old builds are never reused by mistake.
RECIPE: dict[str, Any] = {
    "version": 1,
    "seed": 1234,
    "vocab_target": 1024,
    # vLLM's CPU attention kernel needs head size >= 32: 128 / 4 heads = 32.
    "llama": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    "lora": {
        "r": 8,
        "lora_alpha": 32,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"],
        "seed": 99,
    },
    "special": {"bos": "<|begin_of_text|>", "eos": "<|im_end|>", "start": "<|im_start|>"},
    "chat_template": (
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}

# Some text for the BPE merges; content does not matter, only that it is fixed.
CORPUS = """\
Loopgate routes traffic between policy versions and records what people think of the answers.
The quick brown fox jumps over the lazy dog. A red apple, a green pear and a yellow banana.
Yes or no? Maybe later. The weather today is sunny with a light breeze from the west.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000. JSON looks like {"answer": "yes", "score": 3}.
Hello, how can I help you today? Thank you for your feedback; we will improve the answer.
Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.
"""


def recipe_hash() -> str:
    """Short stable hash of the recipe and corpus: the cache folder's name."""
    blob = json.dumps(RECIPE, sort_keys=True) + CORPUS
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_root(cache: Path) -> Path:
    """Folder holding base/ and lora/ for the current recipe under `cache`."""
    return cache / "models" / recipe_hash()


def _build_tokenizer(out: Path) -> Any:
    """Trains a byte-level BPE on CORPUS and saves it as a fast HF tokenizer with a template."""
    # Only the vLLM venv has these; the gateway venv's mypy sees them as missing.
    from tokenizers import (  # type: ignore[import-not-found,unused-ignore]
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # type: ignore[import-not-found,unused-ignore]

    special = RECIPE["special"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=RECIPE["vocab_target"],
        special_tokens=[special["bos"], special["eos"], special["start"]],
        # Every byte in the alphabet, so any text (and any guided-decoding grammar) is encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special["bos"],
        eos_token=special["eos"],
        pad_token=special["eos"],
        additional_special_tokens=[special["start"]],
        model_max_length=RECIPE["llama"]["max_position_embeddings"],
    )
    fast.chat_template = RECIPE["chat_template"]
    fast.save_pretrained(str(out))
    return fast


def build(cache: Path) -> Path:
    """Builds base model, tokenizer and adapter under cache/models/<hash> unless already there."""
    root = model_root(cache)
    if (root / "lora" / "adapter_config.json").exists():
        return root

    import torch  # type: ignore[import-not-found,unused-ignore]
    from peft import LoraConfig, get_peft_model  # type: ignore[import-not-found,unused-ignore]
    from transformers import (  # type: ignore[import-not-found,unused-ignore]
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    root.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename at the end: an interrupted build leaves no half folder.
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        base = work / "base"
        tok = _build_tokenizer(base)
        special = RECIPE["special"]
        torch.manual_seed(RECIPE["seed"])
        config = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.convert_tokens_to_ids(special["bos"]),
            eos_token_id=tok.convert_tokens_to_ids(special["eos"]),
            pad_token_id=tok.convert_tokens_to_ids(special["eos"]),
            **RECIPE["llama"],
        )
        model = LlamaForCausalLM(config).to(torch.float32)
        model.save_pretrained(str(base), safe_serialization=True)
        # Only token ids, no sampling defaults: vLLM applies generation_config.json's sampling
        # fields as request defaults, and the tests want OpenAI's defaults.
        GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        ).save_pretrained(str(base))

        lora = RECIPE["lora"]
        torch.manual_seed(lora["seed"])
        peft_model = get_peft_model(
            model,
            LoraConfig(
                r=lora["r"],
                lora_alpha=lora["lora_alpha"],
                target_modules=lora["target_modules"],
                # Random B as well as A: peft's default zero B would make the adapter a no-op,
                # and the tests need the two policy versions to answer differently.
                init_lora_weights=False,
                task_type="CAUSAL_LM",
            ),
        )
        peft_model.save_pretrained(str(work / "lora"), safe_serialization=True)
        # vLLM looks up adapters by their folder; keep the base's absolute path out of it.
        cfg_path = work / "lora" / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = "tiny-base"
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        (work / "recipe.json").write_text(json.dumps(RECIPE, indent=2, sort_keys=True))
        try:
            work.rename(root)
        except OSError:
            # Another process finished the same build first; theirs is as good as ours.
            if not (root / "base" / "config.json").exists():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> int:
    """CLI: build into --cache and print the model root on stdout."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path(__file__).parents[2] / ".cache")
    args = parser.parse_args(argv)
    print(build(args.cache.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
