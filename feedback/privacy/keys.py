"""Unit keys, the stores' interfaces, and the bounded cache every holder of keys uses."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KID_BYTES = 8
SECRET_BYTES = 32  # AES-256
RECORD_BYTES = KID_BYTES + SECRET_BYTES


class KeyStoreError(Exception):
    """The key store cannot be reached or written."""


@dataclass(frozen=True, slots=True)
class UnitKey:
    """One unit's content key; `kid` tells a key made after a forget from the one before."""

    kid: str  # hex of KID_BYTES random bytes
    secret: bytes = field(repr=False)
    aead: AESGCM = field(repr=False, compare=False)

    @classmethod
    def new(cls) -> UnitKey:
        """A fresh random key."""
        return cls.from_record(secrets.token_bytes(RECORD_BYTES))

    @classmethod
    def from_record(cls, record: bytes) -> UnitKey:
        """The key a store holds as `kid || secret`."""
        if len(record) != RECORD_BYTES:
            raise ValueError(f"a unit key record is {RECORD_BYTES} bytes, not {len(record)}")
        secret = record[KID_BYTES:]
        return cls(record[:KID_BYTES].hex(), secret, AESGCM(secret))

    def record(self) -> bytes:
        """What a store keeps."""
        return bytes.fromhex(self.kid) + self.secret


class KeyReader(Protocol):
    """What `open_event` needs: the current key of a unit, None once it is gone."""

    def unit_key(self, unit_hash: str) -> UnitKey | None:
        """The unit's key, or None when it was forgotten (or never made)."""
        ...


class KeyStore(Protocol):
    """Where the pipeline gets keys (made on first use) and where forgetting deletes them."""

    async def keys_for(self, unit_hashes: Collection[str]) -> dict[str, UnitKey]:
        """The key of every unit, made and stored durably first where there is none."""
        ...

    async def forget(self, unit_hash: str) -> bool:
        """Delete the unit's key everywhere; True when there was one."""
        ...

    async def aclose(self) -> None:
        """Release connections and background tasks."""
        ...


class KeyRing:
    """Keys already fetched, as a KeyReader (for async readers that fetched a batch first)."""

    def __init__(self, keys: dict[str, UnitKey] | None = None) -> None:
        self.keys = dict(keys or {})

    def unit_key(self, unit_hash: str) -> UnitKey | None:
        """The fetched key, None when the unit has none."""
        return self.keys.get(unit_hash)


class KeyCache:
    """At most `size` entries, each for at most `ttl_s`: least recently used leave first.

    Values may be None (a unit known to have no key), so readers of erased units do not
    ask the store for every event.
    """

    def __init__(
        self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, UnitKey | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def lookup(self, unit_hash: str, margin_s: float = 0.0) -> tuple[bool, UnitKey | None]:
        """(hit, value): a miss when absent, expired, or expiring within `margin_s`."""
        item = self._items.get(unit_hash)
        if item is None:
            return False, None
        if item[0] <= self._clock() + margin_s:
            del self._items[unit_hash]
            return False, None
        self._items.move_to_end(unit_hash)
        return True, item[1]

    def put(self, unit_hash: str, key: UnitKey | None) -> None:
        """Remember the unit's key (or that it has none) for ttl_s."""
        self._items[unit_hash] = (self._clock() + self.ttl_s, key)
        self._items.move_to_end(unit_hash)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def discard(self, unit_hash: str) -> None:
        """Forget what is held for the unit (a forget was announced)."""
        self._items.pop(unit_hash, None)

    def clear(self) -> None:
        """Drop everything (forgets may have been missed)."""
        self._items.clear()
