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


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record the sink can never deliver, and why (a `reason` label value)."""

    index: int  # in the batch given to emit
    record: Record
    reason: str  # a dead-letter reason (feedback.sinks.faults.DEAD_LETTER_REASONS)
    detail: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a sink did beyond delivering the batch as given."""

    truncated: tuple[int, ...] = ()  # indices of records delivered with their content cut
    rejected: tuple[Rejection, ...] = ()


class RecordsRejected(SinkError):
    """Every record of the batch was delivered except `delivery.rejected`, which never can be."""

    def __init__(self, message: str, delivery: Delivery) -> None:
        super().__init__(message)
        self.delivery = delivery


class EventSink(Protocol):
    """Takes batches of records; raises SinkError when it cannot take them all."""

    async def emit(self, records: Sequence[Record]) -> Delivery | None:
        """Deliver the batch in order, or raise SinkError (RecordsRejected: all but some)."""
        ...

    async def aclose(self) -> None:
        """Flush what can be flushed and release resources."""
        ...
