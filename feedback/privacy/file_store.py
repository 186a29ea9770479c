"""Unit keys in files on this machine (the embedded default): one small file per unit.

A key file is written whole, fsync'd, and linked into place only if none exists, so workers
racing on one new unit agree on one key, and a key is on disk before any event sealed with
it can be. Forgetting unlinks the file. Other workers notice within the cache TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from feedback.privacy.keys import KeyCache, KeyStoreError, UnitKey

_SYNC_THREADS = 32
_UNIT_HASH = re.compile(r"[0-9a-f]{8,128}")


def check_unit_hash(unit_hash: str) -> str:
    """The hash if it looks like one (lowercase hex); a path made from anything else could
    leave the key directory."""
    if not _UNIT_HASH.fullmatch(unit_hash):
        raise ValueError(f"{unit_hash[:40]!r} is not a unit hash (8-128 lowercase hex digits)")
    return unit_hash


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileKeyStore:
    """Keys under `directory/<2 hex>/<unit hash>.key`; a KeyStore and a KeyReader."""

    def __init__(self, directory: Path, cache: KeyCache) -> None:
        self.directory = directory
        self.cache = cache

    def _path(self, unit_hash: str) -> Path:
        check_unit_hash(unit_hash)
        return self.directory / unit_hash[:2] / f"{unit_hash}.key"

    def _read(self, unit_hash: str) -> UnitKey | None:
        try:
            return UnitKey.from_record(self._path(unit_hash).read_bytes())
        except FileNotFoundError:
            return None

    def unit_key(self, unit_hash: str) -> UnitKey | None:
        """The unit's key, None when it has none (or the hash is not one)."""
        hit, key = self.cache.lookup(unit_hash)
        if hit:
            return key
        if not _UNIT_HASH.fullmatch(unit_hash):
            return None  # not a hash this store could have made a key for
        try:
            key = self._read(unit_hash)
        except (OSError, ValueError) as exc:  # a damaged key file is not an erased unit
            raise KeyStoreError(f"key of unit {unit_hash} in {self.directory}: {exc}") from exc
        self.cache.put(unit_hash, key)
        return key

    def get_or_create(self, unit_hash: str, sync_dir: bool = True) -> UnitKey:
        """The unit's key, made and written durably first when it has none."""
        existing = self._read(unit_hash)
        if existing is not None:
            return existing
        path = self._path(unit_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = UnitKey.new()
        tmp = path.with_name(f".{unit_hash}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key.record())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another worker made one first: theirs wins
        except FileExistsError:
            winner = self._read(unit_hash)
            if winner is None:  # forgotten in between: ours is as good as any
                os.link(tmp, path)
                winner = key
            key = winner
        finally:
            tmp.unlink(missing_ok=True)
        if sync_dir:
            _fsync_dir(path.parent)
        return key

    def _get_many(self, unit_hashes: Collection[str]) -> dict[str, UnitKey]:
        # New keys' fsyncs run side by side, so the file system commits them together
        # (one at a time cost ~10 ms each here), and each directory is synced once.
        units = list(unit_hashes)
        with ThreadPoolExecutor(min(_SYNC_THREADS, len(units))) as pool:
            keys = list(pool.map(lambda unit: self.get_or_create(unit, sync_dir=False), units))
        for parent in {self._path(unit).parent for unit in units}:
            _fsync_dir(parent)
        return dict(zip(units, keys, strict=True))

    async def keys_for(self, unit_hashes: Collection[str]) -> dict[str, UnitKey]:
        """Every unit's key; misses are read or made in a thread (fsync is slow)."""
        out: dict[str, UnitKey] = {}
        missing = []
        for unit in unit_hashes:
            hit, key = self.cache.lookup(unit, margin_s=1.0)  # as Sealer.missing asks
            if hit and key is not None:
                out[unit] = key
            else:
                missing.append(unit)
        if missing:
            try:
                made = await asyncio.to_thread(self._get_many, missing)
            except (OSError, ValueError) as exc:
                raise KeyStoreError(f"key directory {self.directory}: {exc}") from exc
            for unit, key in made.items():
                self.cache.put(unit, key)
            out.update(made)
        return out

    def forget_now(self, unit_hash: str) -> bool:
        """Delete the unit's key file; True when there was one."""
        path = self._path(unit_hash)
        self.cache.discard(unit_hash)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            _fsync_dir(path.parent)
        return True

    async def forget(self, unit_hash: str) -> bool:
        """Delete the unit's key file; True when there was one."""
        return await asyncio.to_thread(self.forget_now, unit_hash)

    async def aclose(self) -> None:
        """Nothing to release."""
