"""The simulator's pure parts: token approximation, styled writer, scheduler, stop strings."""

from __future__ import annotations

import asyncio

import pytest

from sim.engine import _apply_stop
from sim.profile import STYLES, SimProfile
from sim.scheduler import Scheduler
from sim.text import answer_rng, compose, count_tokens, split_tokens, topic_words


def test_tokens_rebuild_the_text_and_count_words_and_punctuation() -> None:
    text = "Hello, world! It's 42 degrees."
    pieces = split_tokens(text)
    assert "".join(pieces) == text
    assert count_tokens(text) == len(pieces) == 10


def test_topic_words_skip_filler_and_prefer_telling_words() -> None:
    assert topic_words("How do I tune Postgres vacuum settings?")[:2] == ["postgres", "settings"]
    assert topic_words("hi") == []


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("tokens", [1, 3, 12, 48, 200])
def test_compose_gives_exactly_the_asked_length(style: str, tokens: int) -> None:
    pieces = compose(style, "Kafka retention for billing events", answer_rng(1, style), tokens)
    assert 1 <= len(pieces) <= tokens
    if tokens >= 12:
        # Long enough for whole sentences: the answer ends on a sentence mark.
        assert len(pieces) >= tokens - 6
        assert pieces[-1].strip() in {".", "!", "?"}


def test_same_seed_same_answer_other_seed_other_answer() -> None:
    def answer(seed: int) -> str:
        return "".join(compose("formal", "quarterly tax filing", answer_rng(seed, "x"), 40))

    assert answer(1) == answer(1)
    assert answer(1) != answer(2)


def test_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="style"):
        SimProfile(style="pirate")


def test_stop_string_cuts_before_it() -> None:
    pieces = split_tokens("Keep it lean. Then ship it.")
    kept, stop = _apply_stop(pieces, ["ship", "lean"])
    assert "".join(kept) == "Keep it "
    assert stop == "lean"
    assert _apply_stop(pieces, ["absent"]) == (pieces, None)


def test_scheduler_queues_beyond_capacity_and_survives_cancelled_waiters() -> None:
    async def scenario() -> None:
        scheduler = Scheduler(max_num_seqs=1, kv_cache_tokens=100)
        await scheduler.acquire()
        first = asyncio.create_task(scheduler.acquire())
        second = asyncio.create_task(scheduler.acquire())
        await asyncio.sleep(0)
        assert (scheduler.running, scheduler.waiting) == (1, 2)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert scheduler.waiting == 1
        scheduler.release()
        await second
        assert (scheduler.running, scheduler.waiting) == (1, 0)
        scheduler.hold(150)
        assert scheduler.kv_usage == 1.0
        scheduler.free(150)
        scheduler.release()
        assert (scheduler.running, scheduler.kv_usage) == (0, 0.0)

    asyncio.run(scenario())
