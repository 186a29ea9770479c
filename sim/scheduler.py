"""Batch slots and KV-cache occupancy of a simulated engine: what makes the load gauges move."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Scheduler:
    """At most `max_num_seqs` requests run at once; the rest wait in arrival order."""

    def __init__(self, max_num_seqs: int, kv_cache_tokens: int) -> None:
        self.capacity = max_num_seqs
        self.kv_capacity = kv_cache_tokens
        self.running = 0
        self.kv_held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued for a slot right now."""
        return len(self._waiters)

    @property
    def kv_usage(self) -> float:
        """Share of the KV cache held by running requests, 0 to 1 as vLLM reports it."""
        return min(1.0, self.kv_held / self.kv_capacity)

    async def acquire(self) -> None:
        """Wait for a batch slot; a cancelled waiter leaves the queue without taking one."""
        if self.running < self.capacity and not self._waiters:
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self.release()
            else:
                self._discard(fut)
            raise

    def release(self) -> None:
        """Give a slot back, handing it straight to the oldest live waiter."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1

    def hold(self, tokens: int) -> None:
        """Count tokens into the KV cache."""
        self.kv_held += tokens

    def free(self, tokens: int) -> None:
        """Count tokens out of the KV cache."""
        self.kv_held -= tokens

    def _discard(self, fut: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)
