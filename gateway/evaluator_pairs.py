"""Shadow pairs waiting for their other half, for the pair judge (pure; time passed in).

A primary that was mirrored and its shadow finish in either order, or one of them never does
(a shadow dropped, cancelled or stalled). Each half waits here under the primary's response id
until the other arrives, at most `wait_s`, and at most `capacity` halves wait at once: the
oldest makes room. A half that cannot be judged (failed, opted out, empty) leaves a marker,
so that its other half is let go when it arrives instead of waiting to expire.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

H = TypeVar("H")


@dataclass(slots=True)
class Arrival(Generic[H]):
    """What one half's arrival settled: a complete pair, and halves dropped on the way."""

    pair: tuple[H, H] | None = None  # (primary, shadow)
    expired: int = 0  # waited `wait_s` for a half that never came
    overflowed: int = 0  # made room for a newer half
    # Halves let go because the other half cannot be judged (not counted: neither is scored).
    unpaired: int = 0


@dataclass(slots=True)
class _Waiting(Generic[H]):
    at: float
    role: str
    half: H | None  # None: this half cannot be judged, its pair is off


@dataclass
class PairBook(Generic[H]):
    """Halves of shadow pairs by the primary's response id, bounded in time and in number."""

    wait_s: float
    capacity: int
    # Insertion order is arrival order, so the oldest (first to expire) is at the front.
    waiting: OrderedDict[str, _Waiting[H]] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self.waiting)

    def expire(self, now: float) -> int:
        """Let go of halves that waited too long; how many could have been judged."""
        expired = 0
        while self.waiting:
            key, oldest = next(iter(self.waiting.items()))
            if now - oldest.at < self.wait_s:
                break
            del self.waiting[key]
            expired += oldest.half is not None
        return expired

    def arrive(self, key: str, role: str, half: H | None, now: float) -> Arrival[H]:
        """One half finished (`half` None when it cannot be judged): pair it or let it wait."""
        result: Arrival[H] = Arrival(expired=self.expire(now))
        other = self.waiting.get(key)
        if other is not None and other.role != role:
            del self.waiting[key]
            if other.half is None or half is None:
                result.unpaired = int(other.half is not None or half is not None)
            else:
                result.pair = (half, other.half) if role == "primary" else (other.half, half)
            return result
        if other is not None:
            return result  # the same half twice: the first one stands
        if len(self.waiting) >= self.capacity:
            _, oldest = self.waiting.popitem(last=False)
            result.overflowed = int(oldest.half is not None)
        self.waiting[key] = _Waiting(now, role, half)
        return result

    def drain(self) -> int:
        """Forget every waiting half (shutdown); how many could have been judged."""
        live = sum(1 for w in self.waiting.values() if w.half is not None)
        self.waiting.clear()
        return live
