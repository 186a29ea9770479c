"""Votes on one piece of content, folded into a label: majority, margin, reviewers first (pure).

Every polar judgement is a vote of one voter (a user: the unit that got the answer; a
reviewer: by name; a judge: by name) for or against a statement (this answer is good, this
answer beats that one). A voter's latest vote counts; reviewers outrank users when
`reviewer_precedence` is on and they do not split evenly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

SOURCES = ("user", "reviewer", "judge")


class VoteConfig(BaseModel):
    """How votes become a label (recorded in the manifest with the rules)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Fewer user votes than this on a piece of content: no label (reviewer labels need one).
    min_votes: int = Field(1, ge=1)
    # The winning side must lead by at least this many votes; 1 drops only exact ties.
    margin: int = Field(1, ge=1)
    # Reviewers' votes alone decide where any reviewer voted (unless they split evenly).
    reviewer_precedence: bool = True
    # Whose votes count at all; judges stay out until their agreement with people is shown.
    sources: frozenset[str] = frozenset({"user", "reviewer"})


@dataclass(frozen=True, slots=True)
class Vote:
    """One voter's judgement of a statement: +1 for it, -1 against."""

    voter: str
    polarity: int
    source: str
    order: tuple[str, str]  # (ISO time, event_id): the latest vote of a voter counts
    kind: str

    def flipped(self) -> Vote:
        """The same vote on the opposite statement."""
        return Vote(self.voter, -self.polarity, self.source, self.order, self.kind)


@dataclass(frozen=True, slots=True)
class Tally:
    """Votes for and against after one-voter-one-vote, and whose votes decided."""

    positive: int
    negative: int
    source: str  # "reviewer" when reviewers decided, else "user" (or "judge" when only judges)
    kind: str  # the kind of the latest vote on the leading side ("" when there is none)

    @property
    def total(self) -> int:
        """Votes counted."""
        return self.positive + self.negative


def latest_per_voter(votes: Iterable[Vote]) -> list[Vote]:
    """Each voter's latest vote (order, then polarity, so the result is order-independent)."""
    latest: dict[str, Vote] = {}
    for vote in votes:
        kept = latest.get(vote.voter)
        if kept is None or (vote.order, vote.polarity) > (kept.order, kept.polarity):
            latest[vote.voter] = vote
    return sorted(latest.values(), key=lambda v: (v.order, v.voter))


def _count(votes: list[Vote], source: str) -> Tally:
    positive = sum(1 for v in votes if v.polarity > 0)
    negative = len(votes) - positive
    sign = 1 if positive > negative else -1 if negative > positive else 0
    leading = [v for v in votes if sign == 0 or v.polarity == sign]
    return Tally(positive, negative, source, leading[-1].kind if leading else "")


def tally(votes: Iterable[Vote], config: VoteConfig) -> Tally:
    """Fold votes: one per voter, reviewers first when they agree on a side."""
    counted = [v for v in latest_per_voter(votes) if v.source in config.sources]
    if config.reviewer_precedence:
        reviewers = [v for v in counted if v.source == "reviewer"]
        decided = _count(reviewers, "reviewer")
        if decided.positive != decided.negative:
            return decided
    sources = {v.source for v in counted}
    return _count(counted, "user" if sources - {"judge"} or not sources else "judge")


def decide(counted: Tally, config: VoteConfig) -> int | str:
    """+1 or -1, or why there is no label: `too_few_votes`, `tie` or `no_majority`."""
    if counted.source != "reviewer" and counted.total < config.min_votes:
        return "too_few_votes"
    if counted.positive == counted.negative:
        return "tie"
    if abs(counted.positive - counted.negative) < config.margin:
        return "no_majority"
    return 1 if counted.positive > counted.negative else -1


def share(counted: Tally, polarity: int) -> float:
    """The share of counted votes on the `polarity` side (the example's weight)."""
    side = counted.positive if polarity > 0 else counted.negative
    return side / counted.total if counted.total else 0.0
