"""One simulated vLLM engine: its profile, queue, counters, faults and the answers it writes."""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sim.metrics import SimMetrics
from sim.profile import STYLES, SimProfile
from sim.protocol import Job
from sim.recorder import Recorder
from sim.reward import judge_answer
from sim.scheduler import Scheduler
from sim.text import answer_rng, compose, split_tokens

Fault = Literal["stall", "error", "midstream"] | None


@dataclass(slots=True)
class Answer:
    """One choice: its tokens, why it ended, and the stop string that ended it, if any."""

    pieces: list[str]
    finish_reason: str
    stop_reason: str | None = None

    @property
    def text(self) -> str:
        """The whole answer."""
        return "".join(self.pieces)


def _apply_stop(pieces: list[str], stops: list[str]) -> tuple[list[str], str | None]:
    """Cut the answer before the earliest stop string, as vLLM does (stop string excluded)."""
    text = "".join(pieces)
    hits = [(text.find(stop), stop) for stop in stops if stop in text]
    if not hits:
        return pieces, None
    cut, stop = min(hits)
    kept: list[str] = []
    size = 0
    for piece in pieces:
        if size + len(piece) > cut:
            if cut > size:
                kept.append(piece[: cut - size])
            break
        kept.append(piece)
        size += len(piece)
    return kept, stop


class SimEngine:
    """Everything one simulator instance knows; the HTTP layer only reads and drives it."""

    def __init__(
        self,
        profile: SimProfile,
        served_model: str,
        adapters: Mapping[str, str] | None = None,
        history: int = 256,
    ) -> None:
        for name, style in (adapters or {}).items():
            if style not in STYLES:
                raise ValueError(f"adapter {name!r}: style {style!r} is not one of {STYLES}")
        self.profile = profile
        self.served_model = served_model
        # Model name -> writing style; LoRA adapters may each write in their own voice.
        self.styles = {served_model: profile.style, **(adapters or {})}
        self.adapters = dict(adapters or {})
        self.scheduler = Scheduler(profile.max_num_seqs, profile.kv_cache_tokens)
        self.recorder = Recorder(history)
        self.metrics = SimMetrics(served_model)
        # Writing is the costly part of an answer and a pure function of the request, so
        # repeated prompts (load tests) reuse it; bounded so memory levels off.
        self._write = functools.lru_cache(maxsize=2048)(self._compose)
        self.reset()

    def _compose(self, seed: int | str, style: str, topic: str, index: int) -> tuple[str, ...]:
        profile = self.profile
        rng = answer_rng(profile.seed, seed, style, topic, index)
        spread = profile.jitter * (2.0 * rng.random() - 1.0)
        length = max(1, round(profile.output_tokens * (1.0 + spread)))
        return tuple(compose(style, topic, rng, length))

    def reset(self) -> None:
        """Forget requests and counters and restart the fault sequence from the seed."""
        self.recorder.reset()
        self.metrics.reset()
        # Faults and latency jitter vary from request to request, in a seeded sequence.
        self.rng = random.Random(self.profile.seed)

    def draw_fault(self, stream: bool) -> Fault:
        """Stall, error or neither for the next request; streams may also fail midway."""
        profile = self.profile
        roll = self.rng.random()
        if roll < profile.stall_rate:
            return "stall"
        if roll < profile.stall_rate + profile.error_rate:
            return "error"
        if (
            stream
            and profile.midstream_error_rate
            and self.rng.random() < (profile.midstream_error_rate)
        ):
            return "midstream"
        return None

    def jittered(self, seconds: float) -> float:
        """A latency with the profile's relative jitter; zero stays zero."""
        if not seconds or not self.profile.jitter:
            return seconds
        return seconds * (1.0 + self.profile.jitter * (2.0 * self.rng.random() - 1.0))

    def answers(self, job: Job) -> list[Answer]:
        """The choices for a request: the same request and seed give the same answers."""
        style = self.styles[job.model]
        seed = "-" if job.seed is None else job.seed
        result: list[Answer] = []
        for topic, prompt_tokens in job.prompts:
            # Generation stops at the context length whatever max_tokens asked for.
            limit = self.profile.max_model_len - prompt_tokens
            if job.max_tokens is not None:
                limit = min(limit, job.max_tokens)
            for index in range(job.n):
                if job.json_object:
                    profile = self.profile
                    text = judge_answer(
                        topic, profile.seed, profile.reward_terms, profile.judge_position_bias
                    )
                    pieces = split_tokens(text)
                else:
                    pieces = list(self._write(seed, style, topic, index))
                pieces, stop = _apply_stop(pieces, job.stop)
                if stop is not None and len(pieces) <= limit:
                    result.append(Answer(pieces, "stop", stop))
                elif len(pieces) > limit:
                    result.append(Answer(pieces[:limit], "length"))
                else:
                    result.append(Answer(pieces, "stop"))
        return result

    def stats(self) -> dict[str, object]:
        """Counters and load, as /sim/stats shows them."""
        scheduler = self.scheduler
        return {
            **self.recorder.counts,
            "running": scheduler.running,
            "waiting": scheduler.waiting,
            "kv_cache_usage": scheduler.kv_usage,
            "model": self.served_model,
            "style": self.profile.style,
        }
