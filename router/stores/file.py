"""File store: a YAML file of flags, reloaded when it changes; a bad edit keeps the last good."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from pathlib import Path

from router.errors import ConflictError, FlagNotFound, FlagValidationError, ReadOnlyStore
from router.model import Flag, validate_pools
from router.snapshot import FlagSnapshot
from router.stores.base import AuditAction, AuditRecord, AuditSink, emit_audit
from router.stores.flagfile import dump_flags, parse_flags

log = logging.getLogger("loopgate.flags.file")

_Signature = tuple[int, int, int]


def _signature(path: Path) -> _Signature | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _write_atomically(path: Path, text: str) -> None:
    # Temp file in the same directory, fsync'd, then renamed: readers see old or new, never half.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class FileFlagStore:
    """Flags from one YAML file, polled for changes; writes rewrite it atomically."""

    def __init__(
        self,
        path: Path,
        known_pools: Collection[str],
        on_audit: AuditSink,
        *,
        read_only: bool = False,
        reload_interval: float = 1.0,
    ) -> None:
        self.path = path
        self._pools = frozenset(known_pools)
        self._on_audit = on_audit
        self._read_only = read_only
        self._interval = reload_interval
        self._snapshot = FlagSnapshot()
        self._signature: _Signature | None = None
        self._digest = b""
        # Monotonic time of the first rejected edit of the file as it is now; None when good.
        self._broken_since: float | None = None
        self._lock = asyncio.Lock()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        path: Path,
        known_pools: Collection[str],
        on_audit: AuditSink,
        *,
        read_only: bool = False,
        reload_interval: float = 1.0,
    ) -> AsyncIterator[FileFlagStore]:
        """Load the file (a bad file fails the start) and watch it until the block exits."""
        store = cls(
            path, known_pools, on_audit, read_only=read_only, reload_interval=reload_interval
        )
        await store.load()
        task = asyncio.create_task(store._watch(), name=f"flags-file-reload:{path.name}")
        try:
            yield store
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def snapshot(self) -> FlagSnapshot:
        """Every flag served now."""
        return self._snapshot

    def staleness_seconds(self) -> float:
        """Seconds since the file was edited into something we refused; 0 when it is in use."""
        if self._broken_since is None:
            return 0.0
        return time.monotonic() - self._broken_since

    async def load(self) -> None:
        """Read and parse the file now; FlagValidationError (and nothing changes) when bad."""
        signature = _signature(self.path)
        try:
            data = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            raise FlagValidationError(f"cannot read flag file {self.path}: {exc}") from exc
        self._accept(data, signature, parse_flags(data.decode(), self._pools, str(self.path)))

    def _accept(self, data: bytes, signature: _Signature | None, flags: dict[str, Flag]) -> None:
        old = self._snapshot.flags
        for key, flag in flags.items():
            prev = old.get(key)
            if prev is not None and prev != flag and flag.version <= prev.version:
                # Exposures carry the flag version; an edit that keeps it blurs two phases.
                log.warning(
                    "flag %s changed in %s but its version stayed %d; bump `version` on edits",
                    key,
                    self.path,
                    flag.version,
                )
        self._snapshot = FlagSnapshot.of(flags, self._snapshot.version + 1)
        self._signature = signature
        self._digest = hashlib.sha256(data).digest()
        self._broken_since = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._poll()
            except Exception:
                log.exception("flag file watcher failed on %s; retrying", self.path)

    async def _poll(self) -> None:
        signature = _signature(self.path)
        if signature is None or signature == self._signature:
            return
        async with self._lock:
            try:
                data = await asyncio.to_thread(self.path.read_bytes)
            except FileNotFoundError:
                return  # mid-rename, or removed: keep serving what we have
            digest = hashlib.sha256(data).digest()
            if digest == self._digest:
                self._signature = signature
                return
            try:
                flags = parse_flags(data.decode(errors="replace"), self._pools, str(self.path))
            except FlagValidationError as exc:
                log.error(
                    "rejected edit of %s, still serving the last good flags: %s", self.path, exc
                )
                self._signature, self._digest = signature, digest
                if self._broken_since is None:
                    self._broken_since = time.monotonic()
                return
            self._accept(data, signature, flags)
            log.info("reloaded %d flags from %s", len(flags), self.path)

    async def get(self, key: str) -> Flag | None:
        """The flag as served (the file is the memory's source; a broken edit is not served)."""
        return self._snapshot.get(key)

    async def put(
        self,
        flag: Flag,
        expected_version: int | None,
        *,
        who: str,
        action: AuditAction | None = None,
    ) -> Flag:
        """Create or replace a flag and rewrite the file atomically."""
        validate_pools(flag, self._pools)
        async with self._lock:
            current = await self._current_for_write()
            before = current.get(flag.key)
            self._check(flag.key, before, expected_version)
            stored = flag.replace(version=1 if before is None else before.version + 1)
            await self._write({**current, flag.key: stored})
        emit_audit(
            self._on_audit,
            AuditRecord(
                who=who,
                action=action or ("create" if before is None else "update"),
                flag_key=flag.key,
                before=before,
                after=stored,
                time=datetime.now(UTC),
                store_version=self._snapshot.version,
            ),
        )
        return stored

    async def delete(self, key: str, expected_version: int, *, who: str) -> None:
        """Remove a flag and rewrite the file atomically."""
        async with self._lock:
            current = await self._current_for_write()
            before = current.get(key)
            if before is None:
                raise FlagNotFound(key)
            self._check(key, before, expected_version)
            await self._write({k: f for k, f in current.items() if k != key})
        emit_audit(
            self._on_audit,
            AuditRecord(
                who=who,
                action="delete",
                flag_key=key,
                before=before,
                after=None,
                time=datetime.now(UTC),
                store_version=self._snapshot.version,
            ),
        )

    @staticmethod
    def _check(key: str, before: Flag | None, expected: int | None) -> None:
        actual = None if before is None else before.version
        if actual != expected:
            if expected is not None and actual is None:
                raise FlagNotFound(key)
            raise ConflictError(key, expected, actual)

    async def _current_for_write(self) -> dict[str, Flag]:
        if self._read_only:
            raise ReadOnlyStore(
                f"{self.path} is the embedded default and is read-only; "
                "set flags.path to a file you own (or use the redis store) to change flags"
            )
        # Re-read so a hand edit made since the last poll is neither lost nor overwritten.
        data = await asyncio.to_thread(self.path.read_bytes)
        try:
            flags = parse_flags(data.decode(), self._pools, str(self.path))
        except FlagValidationError as exc:
            raise FlagValidationError(
                f"{self.path} has an edit we cannot read; fix the file first: {exc}"
            ) from exc
        if hashlib.sha256(data).digest() != self._digest:
            self._accept(data, _signature(self.path), flags)
        return flags

    async def _write(self, flags: dict[str, Flag]) -> None:
        text = dump_flags(flags.values())
        await asyncio.to_thread(_write_atomically, self.path, text)
        self._accept(text.encode(), _signature(self.path), flags)
