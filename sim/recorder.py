"""What a simulator saw: a bounded ring of recent requests and outcome counters, for tests."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

OUTCOMES = ("completed", "cancelled", "errors", "rejected", "stalled")


class Recorder:
    """The last `size` requests (method, path, headers, JSON body, outcome) and counters."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reset()

    def reset(self) -> None:
        """Forget every request and zero the counters."""
        self.entries: deque[dict[str, Any]] = deque(maxlen=self.size)
        self.seq = 0
        self.counts = dict.fromkeys(("received", *OUTCOMES), 0)

    def record(
        self, method: str, path: str, headers: Mapping[str, str], body: Any
    ) -> dict[str, Any]:
        """Remember one received request; the returned entry is filled in as it proceeds."""
        self.seq += 1
        self.counts["received"] += 1
        entry: dict[str, Any] = {
            "seq": self.seq,
            "time": time.time(),
            "method": method,
            "path": path,
            # Lowercase names so tests look up `traceparent` however the client spelled it.
            "headers": {name.lower(): value for name, value in headers.items()},
            "body": body,
            "outcome": "pending",
            "status": None,
            "response_id": None,
        }
        self.entries.append(entry)
        return entry

    def finish(self, entry: dict[str, Any], outcome: str, status: int | None = None) -> None:
        """Settle an entry's outcome once; a stall may still end as cancelled."""
        if entry["outcome"] != "pending" and entry["outcome"] != "stalled":
            return
        entry["outcome"] = outcome
        if status is not None:
            entry["status"] = status
        self.counts[outcome] += 1
