"""Leadership for the controller: a Redis lock (SET NX PX, renewed) so a second copy waits."""

from __future__ import annotations

import secrets
from typing import Any, Protocol

# Renew or release only while the lock still holds our token (a check-and-act in one step).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Leadership(Protocol):
    """Whether this process may act now."""

    async def hold(self) -> bool:
        """Acquire or renew; True while this process is the leader."""
        ...

    async def release(self) -> None:
        """Give leadership up (at exit)."""
        ...


class AlwaysLeader:
    """One controller by construction (inside an embedded gateway)."""

    async def hold(self) -> bool:
        """Always the leader."""
        return True

    async def release(self) -> None:
        """Nothing to give up."""


class RedisLock:
    """`SET key token NX PX ttl`; renewed each call while ours; expires if we die."""

    def __init__(self, redis: Any, key: str, ttl_s: float, holder: str = "") -> None:
        self._redis = redis
        self.key = key
        self._ttl_ms = int(ttl_s * 1000)
        self.token = f"{holder or 'controller'}:{secrets.token_hex(8)}"
        self.held = False

    async def hold(self) -> bool:
        """Renew when held, else try to take it; False (wait) when another holds it."""
        if self.held:
            renewed = await self._redis.eval(_RENEW, 1, self.key, self.token, self._ttl_ms)
            if renewed:
                return True
            self.held = False  # it expired and someone else may have it: do not act
        self.held = bool(await self._redis.set(self.key, self.token, nx=True, px=self._ttl_ms))
        return self.held

    async def release(self) -> None:
        """Delete the key if it is still ours."""
        if self.held:
            await self._redis.eval(_RELEASE, 1, self.key, self.token)
            self.held = False

    async def holder(self) -> str | None:
        """Who holds the lock now (for status output)."""
        raw = await self._redis.get(self.key)
        return raw.decode() if raw else None
