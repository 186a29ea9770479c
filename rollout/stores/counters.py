"""Where experiment counts live: this process's memory, or Redis shared by every replica.

Redis keeps hashes plus a HyperLogLog of distinct units, pipelined in one round trip per flush.
Keys: `<ns>:exp:flags` (set of flags), `<ns>:exp:<flag>:versions` (hash: flag version -> JSON
{weights, killed, seen_at}), `<ns>:exp:<flag>:<version>:<variant>` (hash of tallies) and
`...:<variant>:units` (HyperLogLog of unit hashes).
"""

from __future__ import annotations

from typing import Any

from rollout.counters import (
    Batch,
    CounterBackend,
    ExperimentCounts,
    Tally,
    TallyKey,
    VersionMeta,
    is_float_field,
)


class MemoryCounterBackend:
    """This process only (the embedded default); bounded: distinct units capped per arm."""

    def __init__(self, max_units: int = 50_000, max_versions: int = 256) -> None:
        self._max_units = max_units
        self._max_versions = max_versions
        self._tallies: dict[TallyKey, dict[str, float]] = {}
        self._units: dict[TallyKey, set[str]] = {}
        self._versions: dict[str, dict[int, VersionMeta]] = {}

    async def apply(self, batch: Batch) -> None:
        """Add a batch."""
        for (flag, version), meta in batch.versions.items():
            known = self._versions.setdefault(flag, {})
            known.setdefault(version, meta)
            if len(known) > self._max_versions:
                self._forget(flag, min(known))
        for key, fields in batch.fields.items():
            tally = self._tallies.setdefault(key, {})
            for name, value in fields.items():
                tally[name] = tally.get(name, 0.0) + value
        for key, units in batch.units.items():
            seen = self._units.setdefault(key, set())
            # Past the cap the count is a lower bound; memory stays bounded (FIELD.md 1).
            for unit in units:
                if len(seen) >= self._max_units:
                    break
                seen.add(unit)

    def _forget(self, flag: str, version: int) -> None:
        self._versions[flag].pop(version, None)
        for key in [k for k in self._tallies if k[0] == flag and k[1] == version]:
            self._tallies.pop(key, None)
            self._units.pop(key, None)

    async def read(self, flag: str) -> ExperimentCounts:
        """Everything counted for a flag (copies)."""
        versions = sorted(self._versions.get(flag, {}).values(), key=lambda m: m.version)
        tallies = {
            (version, variant): Tally(dict(fields), len(self._units.get((f, version, variant), ())))
            for (f, version, variant), fields in self._tallies.items()
            if f == flag
        }
        return ExperimentCounts(flag, versions, tallies)

    async def flags(self) -> list[str]:
        """Flags with any counts."""
        return sorted(self._versions)

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisCounterBackend:
    """Shared by every replica: HINCRBY(FLOAT) hashes, PFADD HyperLogLogs, one pipeline a flush."""

    def __init__(self, url: str, namespace: str, ttl_s: float, timeout: float = 2.0) -> None:
        from redis.asyncio import Redis

        self._redis: Any = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._ns = namespace
        self._ttl_ms = int(ttl_s * 1000)

    def _flag_key(self, flag: str) -> str:
        return f"{self._ns}:exp:{flag}"

    def _tally_key(self, flag: str, version: int, variant: str) -> str:
        return f"{self._ns}:exp:{flag}:{version}:{variant}"

    async def apply(self, batch: Batch) -> None:
        """Add a batch in one pipelined round trip."""
        pipe = self._redis.pipeline(transaction=False)
        touched: set[str] = set()
        for (flag, version), meta in batch.versions.items():
            key = self._flag_key(flag) + ":versions"
            pipe.hsetnx(key, str(version), meta.to_json())
            pipe.sadd(f"{self._ns}:exp:flags", flag)
            touched.add(key)
        for (flag, version, variant), fields in batch.fields.items():
            key = self._tally_key(flag, version, variant)
            for name, value in fields.items():
                if is_float_field(name):
                    pipe.hincrbyfloat(key, name, value)
                else:
                    pipe.hincrby(key, name, int(value))
            touched.add(key)
        for (flag, version, variant), units in batch.units.items():
            key = self._tally_key(flag, version, variant) + ":units"
            pipe.pfadd(key, *units)
            touched.add(key)
        # Counters expire unless written to: Redis memory stays bounded for dead experiments.
        for key in touched:
            pipe.pexpire(key, self._ttl_ms)
        await pipe.execute()

    async def read(self, flag: str) -> ExperimentCounts:
        """Everything counted for a flag: two round trips."""
        raw = await self._redis.hgetall(self._flag_key(flag) + ":versions")
        versions = sorted(
            (VersionMeta.from_json(int(v), text) for v, text in raw.items()),
            key=lambda m: m.version,
        )
        keys = [(m.version, name) for m in versions for name in m.weights]
        pipe = self._redis.pipeline(transaction=False)
        for version, variant in keys:
            pipe.hgetall(self._tally_key(flag, version, variant))
            pipe.pfcount(self._tally_key(flag, version, variant) + ":units")
        results = await pipe.execute() if keys else []
        tallies: dict[tuple[int, str], Tally] = {}
        for i, key in enumerate(keys):
            fields, units = results[2 * i], results[2 * i + 1]
            if fields or units:
                tallies[key] = Tally({k.decode(): float(v) for k, v in fields.items()}, int(units))
        return ExperimentCounts(flag, versions, tallies)

    async def flags(self) -> list[str]:
        """Flags with any counts."""
        return sorted(m.decode() for m in await self._redis.smembers(f"{self._ns}:exp:flags"))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def open_backend(
    redis_url: str | None, namespace: str, ttl_s: float, max_units: int
) -> CounterBackend:
    """Redis when a URL is given, else this process's memory."""
    if redis_url:
        return RedisCounterBackend(redis_url, namespace, ttl_s)
    return MemoryCounterBackend(max_units=max_units)
