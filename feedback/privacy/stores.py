"""The key store, writer or reader, that the settings name."""

from __future__ import annotations

import logging
from pathlib import Path

from feedback.privacy.config import PrivacyConfig, key_dir
from feedback.privacy.file_store import FileKeyStore
from feedback.privacy.keys import KeyCache, KeyReader, KeyStore, KeyStoreError
from feedback.privacy.redis_store import RedisKeyReader, RedisKeyStore

log = logging.getLogger(__name__)


def _cache(config: PrivacyConfig) -> KeyCache:
    return KeyCache(config.cache_size, config.cache_ttl_s)


def key_store(
    config: PrivacyConfig, spool_dir: Path, shared: bool = False
) -> FileKeyStore | RedisKeyStore:
    """The pipeline's store (call `listen()` on a Redis one to follow other replicas' forgets).

    `shared`: events leave this machine (Kafka), where keys in local files cannot follow.
    """
    if config.store == "redis":
        return RedisKeyStore(config.redis_url, config.namespace, _cache(config))
    directory = key_dir(config, spool_dir)
    if shared:
        log.warning(
            "events go to Kafka but their content keys are files on this machine (%s): "
            "readers elsewhere cannot open them, and they are lost with this machine; "
            "set events.privacy.store: redis (docs/privacy.md)",
            directory.resolve(),
        )
    return FileKeyStore(directory, _cache(config))


def key_reader(config: PrivacyConfig, spool_dir: Path) -> FileKeyStore | RedisKeyReader:
    """A sync reader of the same keys, for offline tools; refuses a file store that is not
    there (reading with the wrong one would show every event as erased)."""
    if config.store == "redis":
        return RedisKeyReader(config.redis_url, config.namespace, _cache(config))
    directory = key_dir(config, spool_dir)
    if not directory.is_dir():
        raise KeyStoreError(
            f"no key directory at {directory}: sealed events cannot be opened without the "
            "keys the gateway wrote (events.privacy.dir)"
        )
    return FileKeyStore(directory, _cache(config))


def forget_unit(config: PrivacyConfig, spool_dir: Path, unit_hash: str) -> bool:
    """Delete one unit's key from the configured store; True when there was one."""
    if config.store == "redis":
        reader = RedisKeyReader(config.redis_url, config.namespace, _cache(config))
        try:
            return reader.forget_now(unit_hash)
        finally:
            reader.close()
    return FileKeyStore(key_dir(config, spool_dir), _cache(config)).forget_now(unit_hash)


__all__ = ["KeyReader", "KeyStore", "forget_unit", "key_reader", "key_store"]
