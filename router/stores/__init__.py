"""Flag stores behind one seam: the file store (default) and Redis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection

from router.config import FlagsConfig
from router.stores.base import AuditAction, AuditRecord, AuditSink, FlagStore, log_audit
from router.stores.file import FileFlagStore
from router.stores.flagfile import dump_flags, parse_flags
from router.stores.redis import RedisFlagStore

__all__ = [
    "AuditAction",
    "AuditRecord",
    "AuditSink",
    "FileFlagStore",
    "FlagStore",
    "RedisFlagStore",
    "dump_flags",
    "log_audit",
    "open_store",
    "parse_flags",
]


@contextlib.asynccontextmanager
async def open_store(
    config: FlagsConfig, known_pools: Collection[str], on_audit: AuditSink = log_audit
) -> AsyncIterator[FlagStore]:
    """The store `config` names, running until the block exits (put it in the lifespan)."""
    if config.source == "none":
        raise ValueError("flags.source is none: there is no flag store to open")
    if config.source == "file":
        async with FileFlagStore.open(
            config.flags_file(),
            known_pools,
            on_audit,
            read_only=config.file_is_embedded(),
            reload_interval=config.reload_interval,
        ) as file_store:
            yield file_store
        return
    seed = None
    if config.seed_from_file:
        text = config.flags_file().read_text()
        seed = parse_flags(text, known_pools, str(config.flags_file()))
    async with RedisFlagStore.open(
        config.redis_url,
        known_pools,
        on_audit,
        namespace=config.namespace,
        resync_interval=config.resync_interval,
        reconnect_max_delay=config.reconnect_max_delay,
        socket_timeout=config.redis_timeout,
        seed=seed,
    ) as redis_store:
        yield redis_store
