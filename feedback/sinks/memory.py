"""MemorySink: an in-memory EventSink for tests (it keeps everything, so never in production)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from feedback.schema import Event, from_json
from feedback.sinks.base import Record, SinkUnavailable


class MemorySink:
    """Test double: records what it gets; `failing` and `delay` simulate a sick broker."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.failing = False
        self.delay = 0.0
        self.closed = False
        self.batches = 0

    async def emit(self, records: Sequence[Record]) -> None:
        """Keep the batch, unless told to fail."""
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            raise SinkUnavailable("MemorySink is set to fail")
        self.records.extend(records)
        self.batches += 1

    async def aclose(self) -> None:
        """Mark closed."""
        self.closed = True

    def events(self) -> list[Event]:
        """Everything received, parsed back into events."""
        return [from_json(record.value) for record in self.records]
