"""The pipeline's side of erasure: fetch a batch's unit keys, then seal each event dict."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from feedback.privacy.file_store import FileKeyStore
from feedback.privacy.keys import UnitKey
from feedback.privacy.redis_store import RedisKeyStore
from feedback.privacy.seal import CONTENT_FIELDS, NONCE_BYTES, seal_event, sealable
from feedback.schema import Event, PlainEvent
from feedback.sinks.base import Record

log = logging.getLogger(__name__)

SealHook = Callable[[dict[str, Any]], None]
_LOG_EVERY_S = 10.0


@dataclass
class SealStats:
    """Counters since start."""

    sealed: int = 0  # events whose content was encrypted
    withheld: int = 0  # events whose content was dropped: no key could be had for the unit
    store_errors: int = 0  # key store calls that failed
    truncated: int = 0  # events whose content was cut to fit Kafka before sealing


def _unit_of(item: Event | PlainEvent | Record) -> str | None:
    if isinstance(item, Record):
        return None  # already prepared (sealed) once
    if isinstance(item, PlainEvent):
        return sealable(item.data)
    body = getattr(item, "body", None)
    if item.type not in CONTENT_FIELDS or body is None or body.consent == "none":
        return None
    unit: str | None = body.unit_hash
    return unit or None


def withhold(data: dict[str, Any]) -> None:
    """Empty the content fields in place: metadata goes out, content that could not be
    sealed does not (it could never be erased)."""
    body = data["body"]
    for path, empty in CONTENT_FIELDS[data["type"]]:
        parent = body if len(path) == 1 else body.get(path[0])
        if isinstance(parent, dict) and parent.get(path[-1]) is not None:
            parent[path[-1]] = empty


class Sealer:
    """Seals content per unit; while the key store is failing, uses only cached keys."""

    def __init__(
        self,
        store: FileKeyStore | RedisKeyStore,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_plain: int | None = None,
    ) -> None:
        self.store = store
        # Content over this many bytes is cut before sealing, so the event fits Kafka.
        self.max_plain = max_plain
        self.stats = SealStats()
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._down_until = 0.0
        self._last_log = -_LOG_EVERY_S

    def missing(self, items: Iterable[Event | PlainEvent | Record]) -> set[str]:
        """Units of `items` whose keys are not cached (or expire within a second); none
        while the key store is failing (their content will be withheld)."""
        if self._clock() < self._down_until:
            return set()
        cache = self.store.cache
        units = {unit for item in items if (unit := _unit_of(item)) is not None}
        return {unit for unit in units if cache.lookup(unit, margin_s=1.0)[1] is None}

    async def fetch(self, units: set[str]) -> None:
        """Get (or make) these units' keys into the cache; on failure, rest the store."""
        try:
            await self.store.keys_for(units)
        except Exception as exc:  # the worker's edge: a failing store must not stop events
            self.stats.store_errors += 1
            self._down_until = self._clock() + self._retry_after_s
            self._warn(
                "privacy: key store failed (%s); content of units without a "
                "cached key is withheld for %.0fs",
                exc,
                self._retry_after_s,
            )

    async def prepare(self, items: Iterable[Event | PlainEvent | Record]) -> SealHook:
        """Fetch what is missing, then the hook (for callers that hold `items` already)."""
        items = list(items)
        missing = self.missing(items)
        if missing:
            await self.fetch(missing)
        return self.hook(items)

    def hook(self, items: Iterable[Event | PlainEvent | Record]) -> SealHook:
        """The hook that seals these items with the cached keys, without waiting."""
        keys: dict[str, UnitKey] = {}
        for item in items:
            unit = _unit_of(item)
            if unit is not None and unit not in keys:
                key = self.store.cache.lookup(unit)[1]
                if key is not None:
                    keys[unit] = key
        return lambda data: self._seal(data, keys)

    def _seal(self, data: dict[str, Any], keys: dict[str, UnitKey]) -> None:
        unit = sealable(data)
        if unit is None:
            return
        key = keys.get(unit)
        if key is None:
            withhold(data)
            self.stats.withheld += 1
            return
        sealed = seal_event(data, key, os.urandom(NONCE_BYTES), self.max_plain)
        if sealed:
            self.stats.sealed += 1
        if sealed == "truncated":
            self.stats.truncated += 1

    def _warn(self, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.warning(message, *args)
