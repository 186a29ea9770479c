"""A seeded synthetic user population: chats through the openai SDK, judges answers, sends feedback.

`judge()` is pure (a seeded draw per answer); `Population.run()` is the edge that talks to a
gateway: chat completions with a `user` per simulated person, then POST /v1/feedback with the
signed response id (thumbs, edits, regenerations) through the same SDK client.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Support questions as templates x fillers: several hundred distinct prompts, drawn with a
# Zipf-like skew (a few are asked often, most rarely), as real traffic is; see prompts().
TEMPLATES = (
    "Where is my parcel {order}? It was due on {day}.",
    "How do I reset my password on the {device}?",
    "Can I change the delivery address of order {order}?",
    "My invoice for {month} shows the wrong VAT number, what do I do?",
    "How long do refunds take to reach my {payment}?",
    "The app crashes on my {device} when I open my order history.",
    "Do you ship to {country}, and what does it cost?",
    "I was charged twice for order {order}.",
    "How do I cancel my {plan} subscription?",
    "Can I upgrade from {plan} to the next plan in {month}?",
    "Why was my {payment} declined?",
    "Is there a student discount for {plan}?",
    "How do I export my data from the {device} app?",
    "My order {order} arrived damaged, can I get a replacement?",
    "What are your support hours on {day}?",
    "Can I pay with {payment} when ordering to {country}?",
    "How do I turn on two-factor authentication on the {device}?",
    "I never got the confirmation email for order {order}.",
)
FILLERS: dict[str, tuple[str, ...]] = {
    "opener": ("", "Hi! ", "Hello. ", "Quick question. "),
    "order": tuple(f"#{n}" for n in (10482, 20931, 31207, 44518, 57302, 68120)),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"),
    "device": ("iPhone", "Android phone", "iPad", "laptop", "web", "smart TV"),
    "month": ("January", "March", "May", "July", "September", "November"),
    "payment": ("credit card", "debit card", "PayPal account", "bank account", "gift card"),
    "country": ("Norway", "Canada", "Japan", "Brazil", "Ireland", "Kenya", "Chile"),
    "plan": ("Basic", "Plus", "Pro", "Family", "Business"),
}


def prompts() -> tuple[str, ...]:
    """Every distinct demo prompt, in a fixed order (hundreds, from TEMPLATES x FILLERS)."""
    out: list[str] = []
    for template in TEMPLATES:
        slots = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        slots.insert(0, "opener")
        for values in itertools.product(*(FILLERS[slot] for slot in slots)):
            filled = dict(zip(slots, values, strict=True))
            out.append(filled.pop("opener") + template.format(**filled))
    return tuple(out)


def prompt_weights(count: int, skew: float) -> list[float]:
    """Zipf-like weights 1 / rank^skew: popular prompts repeat, so users' votes meet."""
    return [1.0 / (rank**skew) for rank in range(1, count + 1)]


class PopulationConfig(BaseModel):
    """Who the simulated users are and how they judge each variant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: int = Field(300, ge=1)
    seed: int = 7
    model: str = "support-bot"
    # P(the user likes an answer) by variant name; variants not named get `default_like`.
    like: dict[str, float] = Field(default_factory=dict)
    default_like: float = Field(0.65, ge=0.0, le=1.0)
    # P(a user who has an opinion clicks thumbs up or down at all).
    thumbs_rate: float = Field(0.8, ge=0.0, le=1.0)
    # Given a disliked answer: P(edit it), P(ask again).
    edit_rate: float = Field(0.2, ge=0.0, le=1.0)
    regenerate_rate: float = Field(0.25, ge=0.0, le=1.0)
    concurrency: int = Field(12, ge=1)
    max_tokens: int = Field(24, ge=1)
    # Zipf exponent of prompt popularity: 0 is uniform; about 1 is typical of search queries.
    prompt_skew: float = Field(0.9, ge=0.0)


Judgement = tuple[str, dict[str, Any]]


def judge(rng: random.Random, like: float, cfg: PopulationConfig, answer: str) -> list[Judgement]:
    """What one user does about one answer: feedback kinds with their extra fields."""
    liked = rng.random() < like
    out: list[Judgement] = []
    if rng.random() < cfg.thumbs_rate:
        out.append(("thumbs_up" if liked else "thumbs_down", {}))
    if not liked:
        if rng.random() < cfg.edit_rate:
            out.append(("edit", {"edited_text": (answer[:200] + " [edited by user]").strip()}))
        if rng.random() < cfg.regenerate_rate:
            out.append(("regenerate", {}))
    return out


@dataclass
class PopulationStats:
    """What the population did so far, per variant."""

    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    feedback: Counter[tuple[str, str]] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        """Requests per second since the start."""
        elapsed = max(time.monotonic() - self.started_at, 1e-6)
        return sum(self.requests.values()) / elapsed


class Population:
    """Workers drawing users and prompts from one seeded generator each."""

    def __init__(self, base_url: str, cfg: PopulationConfig, api_key: str = "demo") -> None:
        import openai

        self.cfg = cfg
        self.client = openai.AsyncOpenAI(
            base_url=base_url.rstrip("/") + "/v1", api_key=api_key, max_retries=0, timeout=30
        )
        self.stats = PopulationStats()
        # Shuffled once per seed, so which prompts are popular differs between seeds.
        self.prompts = list(prompts())
        random.Random(f"{cfg.seed}:prompts").shuffle(self.prompts)
        self.weights = list(
            itertools.accumulate(prompt_weights(len(self.prompts), cfg.prompt_skew))
        )

    async def _one(self, rng: random.Random) -> None:
        import openai

        user = f"user-{rng.randrange(self.cfg.users):05d}"
        prompt = rng.choices(self.prompts, cum_weights=self.weights)[0]
        try:
            raw = await self.client.chat.completions.with_raw_response.create(
                model=self.cfg.model,
                messages=[{"role": "user", "content": prompt}],
                user=user,
                max_tokens=self.cfg.max_tokens,
            )
        except openai.APIStatusError as err:
            variant = err.response.headers.get("x-loopgate-variant", "?")
            self.stats.requests[variant] += 1
            self.stats.errors[variant] += 1
            return
        variant = raw.headers.get("x-loopgate-variant", "?")
        self.stats.requests[variant] += 1
        answer = raw.parse()
        text = answer.choices[0].message.content or "" if answer.choices else ""
        like = self.cfg.like.get(variant, self.cfg.default_like)
        for kind, extra in judge(rng, like, self.cfg, text):
            body = {"response_id": answer.id, "kind": kind, **extra}
            try:
                await self.client.post("/feedback", cast_to=object, body=body)
            except openai.APIError:
                continue
            self.stats.feedback[(variant, kind)] += 1

    async def _worker(self, index: int, stop: asyncio.Event) -> None:
        import openai

        rng = random.Random(f"{self.cfg.seed}:{index}")
        while not stop.is_set():
            try:
                await self._one(rng)
            except (openai.APIConnectionError, openai.APITimeoutError):
                await asyncio.sleep(0.2)  # the gateway is starting or stopping

    async def run(self, stop: asyncio.Event) -> None:
        """Chat and give feedback until `stop` is set."""
        self.stats = PopulationStats()
        try:
            async with asyncio.TaskGroup() as group:
                for i in range(self.cfg.concurrency):
                    group.create_task(self._worker(i, stop), name=f"population-{i}")
        finally:
            await self.client.close()
