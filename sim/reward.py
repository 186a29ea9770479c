"""A simulated reward model behind vLLM's /pooling route: scores as a seeded function of text.

vLLM serves a single-score reward model (a sequence classifier with one label) through
/pooling with `task: "classify"`: `use_activation: false` gives the raw reward (the logit a
Bradley-Terry reward model is trained to output), the default squashes it with a sigmoid,
as vLLM's one-label classify pooler does. The simulator answers in that shape. Its score is
noise drawn from a hash of the seed and the text, plus weighted counts of configured terms,
so a test or a demo can make one policy's style score better (`--reward-term '!=0.5'`).
A chat request with `response_format: {"type": "json_object"}` is answered as a judge would,
with a 1-5 verdict derived from the same reward; one that shows two answers between the pair
markers (gateway/rubric.py's PAIR_MARKERS) gets a pairwise verdict: the answer with the
higher reward wins, a tie within TIE_MARGIN; it favours the answer shown first only when
told to (`--judge-position-bias`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from sim.protocol import bad_request, invalid_field
from sim.text import count_tokens


def reward(text: str, seed: int, terms: Mapping[str, float], noise: float = 1.0) -> float:
    """The raw reward of `text`: uniform noise in [-noise, noise] plus term weights x counts."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    lowered = text.lower()
    bonus = sum(weight * lowered.count(term.lower()) for term, weight in terms.items() if term)
    return (2.0 * unit - 1.0) * noise + bonus


def verdict(text: str, seed: int, terms: Mapping[str, float]) -> str:
    """A simulated judge's answer to a rubric: {"score": 1-5, "reason": ...}, from reward()."""
    score = min(5, max(1, round(3.0 + reward(text, seed, terms))))
    return json.dumps({"score": score, "reason": f"simulated judge: {score} of 5"})


# The same strings as gateway/rubric.py's PAIR_MARKERS (the sim imports nothing of the gateway;
# tests/unit/sim/test_pair_judge.py checks that the two agree).
_PAIR = re.compile(
    r"<<<ANSWER A>>>\n(?P<a>.*?)\n<<<END OF ANSWER A>>>.*?"
    r"<<<ANSWER B>>>\n(?P<b>.*?)\n<<<END OF ANSWER B>>>",
    re.DOTALL,
)
# Rewards closer than this are a tie.
TIE_MARGIN = 0.1


def pair_answers(text: str) -> tuple[str, str] | None:
    """The two answers a pairwise rubric shows (A, B), or None when it shows no pair."""
    found = _PAIR.search(text)
    return (found["a"], found["b"]) if found else None


def pair_verdict(
    a: str, b: str, seed: int, terms: Mapping[str, float], position_bias: float = 0.0
) -> str:
    """A simulated pairwise judge: {"winner": "A"|"B"|"tie", "reason": ...}, from reward().

    `position_bias` is added to the first answer's reward, as judges that favour what they
    read first do (the pair judge's swap must cancel it).
    """
    ra, rb = reward(a, seed, terms) + position_bias, reward(b, seed, terms)
    winner = "tie" if abs(ra - rb) <= TIE_MARGIN else ("A" if ra > rb else "B")
    return json.dumps({"winner": winner, "reason": f"simulated judge: A {ra:.2f}, B {rb:.2f}"})


def judge_answer(
    rubric: str, seed: int, terms: Mapping[str, float], position_bias: float = 0.0
) -> str:
    """What a judge says to a filled-in rubric: a pairwise verdict for a pair, else a score."""
    pair = pair_answers(rubric)
    if pair is not None:
        return pair_verdict(*pair, seed, terms, position_bias)
    return verdict(rubric, seed, terms)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def pooling_inputs(body: Any) -> tuple[list[str], bool]:
    """The texts a /pooling request asks to score, and whether to apply the activation."""
    if not isinstance(body, dict):
        raise invalid_field("model_attributes_type", "body", "Input should be an object", body)
    task = body.get("task")
    if task not in (None, "classify"):
        raise bad_request(f"Task {task} is not supported by this reward model.", "task")
    activation = body.get("use_activation")
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise invalid_field("list_type", "body.messages", "Input should be a list", messages)
        # A reward model scores the whole conversation, the answer last (its chat template).
        texts = ["\n".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))]
    elif isinstance(body.get("input"), str):
        texts = [body["input"]]
    elif isinstance(body.get("input"), list) and all(isinstance(t, str) for t in body["input"]):
        texts = list(body["input"])
    else:
        raise invalid_field("missing", "body.input", "Field required", body)
    return texts, activation is not False


def pooling_body(
    texts: list[str], model: str, seed: int, terms: Mapping[str, float], activation: bool
) -> dict[str, Any]:
    """vLLM's PoolingResponse for these texts: one score per input in data[i].data."""
    data = []
    for index, text in enumerate(texts):
        score = reward(text, seed, terms)
        if activation:
            score = 1.0 / (1.0 + math.exp(-score))
        data.append({"index": index, "object": "pooling", "data": [score]})
    tokens = sum(count_tokens(t) for t in texts)
    return {
        "id": "pooling-" + os.urandom(8).hex(),
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        },
    }
