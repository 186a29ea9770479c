"""ConsoleState: what the console's routes use, built by the gateway or `loopgate console`."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from console.admin import AdminClient
from console.config import ConsoleConfig
from console.feed import Feed
from console.queues import QueueStore
from console.session import Sessions
from feedback.schema import FeedbackEvent

_SERIES_POINTS = 500
_SERIES_EVERY_S = 5.0


@dataclass
class ConsoleState:
    """Sessions, the admin client, review queues, the event feed and what reviewers chose."""

    config: ConsoleConfig
    sessions: Sessions
    admin: AdminClient
    queues: QueueStore
    feed: Feed | None
    emit: Callable[[FeedbackEvent], None] | None
    instance: str
    prefix: str = "/console"
    # The primary metric's difference (estimate, low, high) per flag, sampled as pages load.
    series: dict[str, deque[tuple[float, float, float, float]]] = field(default_factory=dict)
    exposures: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)
    # Side-by-side choices: (variant shown as A, variant as B, winner), and who judged what.
    choices: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=20_000))
    judged: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)

    def sample(self, flag: str, experiment: dict[str, Any], now: float | None = None) -> None:
        """Remember the canary's always-valid difference and total exposures at this moment."""
        now = time.time() if now is None else now
        total = sum(int(v.get("exposures") or 0) for v in experiment["report"]["variants"])
        seen = self.exposures.setdefault(flag, deque(maxlen=_SERIES_POINTS))
        if not seen or now - seen[-1][0] >= _SERIES_EVERY_S:
            seen.append((now, total))
        canary = experiment["report"].get("canary")
        for v in experiment["report"]["variants"]:
            seq = v.get("sequential")
            if v.get("name") != canary or not seq:
                continue
            cs = seq["confidence_sequence"]
            points = self.series.setdefault(flag, deque(maxlen=_SERIES_POINTS))
            if not points or now - points[-1][0] >= _SERIES_EVERY_S:
                points.append((now, cs["estimate"], cs["low"], cs["high"]))

    def exposures_per_minute(self, flag: str) -> float | None:
        """From the samples of the last few minutes; None before two samples."""
        seen = self.exposures.get(flag)
        if not seen or len(seen) < 2:
            return None
        (t0, n0), (t1, n1) = seen[max(0, len(seen) - 60)], seen[-1]
        return (n1 - n0) * 60.0 / (t1 - t0) if t1 > t0 else None

    def mark_judged(self, reviewer: str, pair_id: str) -> None:
        """A reviewer chose on a pair: not shown to them again (bounded)."""
        self.judged[(reviewer, pair_id)] = None
        while len(self.judged) > 50_000:
            self.judged.popitem(last=False)
