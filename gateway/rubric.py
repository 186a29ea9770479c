"""What evaluators send and how their answers are read (pure): judge rubric, pooling scores."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Literal

from feedback.schema import Winner
from gateway.config import EvaluatorConfig

MAX_REASON = 2000


class BadVerdict(ValueError):
    """An evaluator's answer that is not exactly what was asked for."""


def version(config: EvaluatorConfig, model: str) -> str:
    """`model@hash`: a judge's hash covers its rubric, a reward model's only the route."""
    recipe = config.rubric if config.kind == "judge" else "pooling:classify:raw"
    return f"{model}@{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def sampled(name: str, response_id: str, rate: float) -> bool:
    """Whether this evaluator scores this answer: a hash, so every replica and retry agrees."""
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(f"{name}\0{response_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def conversation(request: dict[str, Any], max_chars: int) -> str:
    """The request as plain text, `role: content` per message (or the prompt), cut to size."""
    messages = request.get("messages")
    if isinstance(messages, list):
        lines = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            lines.append(f"{message.get('role', 'user')}: {content or ''}")
        text = "\n".join(lines)
    else:
        prompt = request.get("prompt")
        text = prompt if isinstance(prompt, str) else ""
    # The end of a conversation is what the answer replies to: keep the tail.
    return text[-max_chars:]


def judge_request(config: EvaluatorConfig, model: str, prompt: str, answer: str) -> dict[str, Any]:
    """The chat request a judge gets: the rubric filled in, deterministic, JSON asked for."""
    # One pass over the template: a conversation that contains "{answer}" is not filled in.
    fills = {"{prompt}": prompt, "{answer}": answer[: config.max_chars]}
    content = re.sub(r"\{prompt\}|\{answer\}", lambda m: fills[m.group(0)], config.rubric)
    return _json_chat(model, content, config.max_tokens)


def reward_request(model: str, prompt: str, answer: str, max_chars: int) -> dict[str, Any]:
    """The /pooling request a reward model gets: the conversation with the answer last, raw."""
    return {
        "model": model,
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer[:max_chars]},
        ],
        "task": "classify",
        "use_activation": False,
    }


def parse_verdict(doc: Any) -> tuple[float, str]:
    """(score, reason) from a judge's chat answer; BadVerdict unless exactly the asked shape.

    The content must be one JSON object with an integer `score` in 1..5 and a string
    `reason`, and nothing else: a judge that rambles, wraps the JSON in prose or fences, or
    adds keys has not followed the rubric, and its number is not trusted.
    """
    verdict = _verdict_object(doc)
    if set(verdict) != {"score", "reason"}:
        raise BadVerdict("the verdict must have exactly `score` and `reason`")
    score, reason = verdict["score"], verdict["reason"]
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise BadVerdict("`score` must be an integer from 1 to 5")
    if not isinstance(reason, str):
        raise BadVerdict("`reason` must be a string")
    return float(score), reason[:MAX_REASON]


def _verdict_object(doc: Any) -> dict[str, Any]:
    """The one JSON object a judge's chat answer consists of; BadVerdict for anything else."""
    try:
        content = doc["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise BadVerdict("no message content in the judge's answer") from None
    if not isinstance(content, str):
        raise BadVerdict("the judge's content is not text")
    try:
        verdict = json.loads(content)
    except json.JSONDecodeError:
        raise BadVerdict("the judge's content is not one JSON object") from None
    if not isinstance(verdict, dict):
        raise BadVerdict("the judge's content is not one JSON object")
    return verdict


def parse_reward(doc: Any) -> float:
    """The reward from vLLM's /pooling answer: data[0].data, one float (or per token: the last)."""
    try:
        values = doc["data"][0]["data"]
    except (KeyError, IndexError, TypeError):
        raise BadVerdict("no data[0].data in the pooling answer") from None
    if isinstance(values, list) and values and isinstance(values[-1], list):
        values = values[-1]  # token_classify: the last token's score is the sequence's
    if not isinstance(values, list) or len(values) != 1:
        raise BadVerdict("a reward model must return exactly one score")
    score = values[0]
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise BadVerdict("the score is not a finite number")
    return float(score)


# Pairs. Each answer goes between these markers, whatever the template around it says; `loopgate
# sim` finds the answers by them (sim/reward.py keeps the same strings, tests check both agree).
PAIR_MARKERS = {
    "A": ("<<<ANSWER A>>>", "<<<END OF ANSWER A>>>"),
    "B": ("<<<ANSWER B>>>", "<<<END OF ANSWER B>>>"),
}
PairWinner = Literal["A", "B", "tie"]
_SIDES: dict[str, PairWinner] = {"A": "A", "B": "B", "tie": "tie"}


def pair_version(config: EvaluatorConfig, model: str) -> str:
    """`model@hash` of the pair template: a changed word is a new judge of pairs."""
    return f"{model}@{hashlib.sha256(config.pair_rubric.encode()).hexdigest()[:12]}"


def _unmarked(answer: str) -> str:
    # An answer must not be able to close its own section and open a fake one.
    for start, end in PAIR_MARKERS.values():
        answer = answer.replace(start, "").replace(end, "")
    return answer


def pair_request(
    config: EvaluatorConfig, model: str, prompt: str, answer_a: str, answer_b: str
) -> dict[str, Any]:
    """The chat request comparing two answers: A shown first, each between its markers."""
    sections = {}
    for side, answer in (("A", answer_a), ("B", answer_b)):
        start, end = PAIR_MARKERS[side]
        sections[side] = f"{start}\n{_unmarked(answer[: config.max_chars])}\n{end}"
    # One pass over the template: an answer that contains "{answer_b}" is not filled in again.
    fills = {"{prompt}": prompt, "{answer_a}": sections["A"], "{answer_b}": sections["B"]}
    content = re.sub(r"\{prompt\}|\{answer_a\}|\{answer_b\}", lambda m: fills[m.group(0)],
                     config.pair_rubric)  # fmt: skip
    return _json_chat(model, content, config.max_tokens)


def parse_pair_verdict(doc: Any) -> tuple[PairWinner, str]:
    """(winner, reason) from a judge's chat answer: exactly {"winner": "A"|"B"|"tie", "reason"}."""
    verdict = _verdict_object(doc)
    if set(verdict) != {"winner", "reason"}:
        raise BadVerdict("the verdict must have exactly `winner` and `reason`")
    winner, reason = verdict["winner"], verdict["reason"]
    if not isinstance(winner, str) or winner not in _SIDES:
        raise BadVerdict('`winner` must be "A", "B" or "tie"')
    if not isinstance(reason, str):
        raise BadVerdict("`reason` must be a string")
    return _SIDES[winner], reason[:MAX_REASON]


def as_pair(verdict: PairWinner, primary_first: bool) -> Winner:
    """A verdict in the preference's terms (a = the primary, b = the shadow)."""
    if verdict == "tie":
        return "tie"
    shown_first = verdict == "A"
    return "a" if shown_first == primary_first else "b"


def swapped_winner(primary_first: PairWinner, shadow_first: PairWinner) -> Winner:
    """The two position-swapped verdicts as one: the same answer both times wins, else a tie.

    A judge that prefers whatever it reads first says "A" both times, which names each answer
    once: that is no preference, and it cancels to a tie.
    """
    first, second = as_pair(primary_first, True), as_pair(shadow_first, False)
    return first if first == second else "tie"


def _json_chat(model: str, content: str, max_tokens: int) -> dict[str, Any]:
    """One user message asking for a JSON object, deterministic: what every judge call sends."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "response_format": {"type": "json_object"},
    }
