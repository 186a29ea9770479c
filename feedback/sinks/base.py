"""The seam between the pipeline and where events end up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Record:
    """One serialised event: topic, key (the response id) and JSON value."""

    topic: str
    key: str
    value: bytes


class SinkError(Exception):
    """The sink did not take the batch; the caller keeps (spools) it."""


class SinkUnavailable(SinkError):
    """The sink cannot be reached or did not acknowledge in time."""


class SpoolFull(SinkError):
    """The spool is at its size bound; `accepted` records of the batch were written."""

    def __init__(self, message: str, accepted: int) -> None:
        super().__init__(message)
        self.accepted = accepted


class EventSink(Protocol):
    """Takes batches of records, all or nothing; raises SinkError when it cannot."""

    async def emit(self, records: Sequence[Record]) -> None:
        """Deliver the batch in order, or raise SinkError."""
        ...

    async def aclose(self) -> None:
        """Flush what can be flushed and release resources."""
        ...
