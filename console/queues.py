"""Review queues: claim one item, label or skip it, reclaim what a reviewer left too long.

Two stores with one behaviour: `MemoryQueues` (the embedded default, one process) and
`RedisQueues` (Redis Streams, one consumer group per queue, shared by every replica and
`loopgate console`). With overlap 2 an item is added twice and no reviewer gets both copies,
so two different people label it and the queue's agreement can be measured.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from console.stats import cohen_kappa

_GROUP = "reviewers"
_RELEASED = "_released"  # a consumer holding items a reviewer passed on, for anyone else
_KEEP_LABELS = 5_000


@dataclass(frozen=True, slots=True)
class Claim:
    """An item handed to a reviewer: the store's entry id and the item itself."""

    entry_id: str
    item: dict[str, Any]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """How much is waiting, claimed and done in one queue, and the reviewers' agreement."""

    waiting: int
    claimed: int
    labelled: int
    kappa: float | None
    pairs: int


class QueueStore(Protocol):
    """Where review items wait."""

    async def add(self, queue: str, item: dict[str, Any], copies: int) -> None:
        """Append an item (`copies` times, for overlapping reviewers)."""
        ...

    async def claim(self, queue: str, reviewer: str, now: float) -> Claim | None:
        """The next item this reviewer has not seen, now theirs until acked or timed out."""
        ...

    async def ack(
        self, queue: str, claim: Claim, reviewer: str, label: str | None, now: float
    ) -> None:
        """Done with a claimed item: labelled (`label` for agreement) or skipped (None)."""
        ...

    async def stats(self, queue: str, now: float) -> QueueStats:
        """Counts and agreement for one queue."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _kappa(labels: Iterable[tuple[str, str, str]]) -> tuple[float | None, int]:
    """Cohen's kappa over items labelled by two reviewers (first two labels of each item)."""
    by_item: dict[str, list[str]] = {}
    for item_id, _reviewer, label in labels:
        by_item.setdefault(item_id, []).append(label)
    pairs = [(got[0], got[1]) for got in by_item.values() if len(got) >= 2]
    return cohen_kappa(pairs), len(pairs)


class _MemoryQueue:
    def __init__(self, max_items: int) -> None:
        self.entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.pending: dict[str, tuple[str, float]] = {}
        self.seen: OrderedDict[str, set[str]] = OrderedDict()
        self.labels: deque[tuple[str, str, str]] = deque(maxlen=_KEEP_LABELS)
        self.labelled = 0
        self.max_items = max_items


class MemoryQueues:
    """Queues in this process: bounded, lost on restart (the embedded default)."""

    def __init__(self, claim_timeout_s: float, max_items: int) -> None:
        self.claim_timeout_s = claim_timeout_s
        self.max_items = max_items
        self._queues: dict[str, _MemoryQueue] = {}
        self._ids = itertools.count(1)

    def _q(self, queue: str) -> _MemoryQueue:
        return self._queues.setdefault(queue, _MemoryQueue(self.max_items))

    async def add(self, queue: str, item: dict[str, Any], copies: int) -> None:
        """Append an item (`copies` times); the oldest entries go past max_items."""
        q = self._q(queue)
        for _ in range(copies):
            q.entries[str(next(self._ids))] = item
        while len(q.entries) > q.max_items:
            old, _ = q.entries.popitem(last=False)
            q.pending.pop(old, None)
        while len(q.seen) > q.max_items:
            q.seen.popitem(last=False)

    async def claim(self, queue: str, reviewer: str, now: float) -> Claim | None:
        """The oldest free entry this reviewer has not seen; stale claims are free again."""
        q = self._q(queue)
        for entry_id, (holder, since) in list(q.pending.items()):
            if holder == reviewer and entry_id in q.entries:
                return Claim(entry_id, q.entries[entry_id])  # still theirs: same item again
            if now - since > self.claim_timeout_s:
                del q.pending[entry_id]
        for entry_id, item in q.entries.items():
            if entry_id in q.pending or reviewer in q.seen.get(item["item_id"], ()):
                continue
            q.pending[entry_id] = (reviewer, now)
            q.seen.setdefault(item["item_id"], set()).add(reviewer)
            return Claim(entry_id, item)
        return None

    async def ack(
        self, queue: str, claim: Claim, reviewer: str, label: str | None, now: float
    ) -> None:
        """Remove the entry; a skipped item's copy stays for someone else."""
        q = self._q(queue)
        q.pending.pop(claim.entry_id, None)
        if label is None:
            return
        q.entries.pop(claim.entry_id, None)
        q.labelled += 1
        q.labels.append((claim.item["item_id"], reviewer, label))

    async def stats(self, queue: str, now: float) -> QueueStats:
        """Counts and agreement."""
        q = self._q(queue)
        claimed = sum(1 for _, since in q.pending.values() if now - since <= self.claim_timeout_s)
        kappa, pairs = _kappa(q.labels)
        return QueueStats(len(q.entries) - claimed, claimed, q.labelled, kappa, pairs)

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisQueues:
    """Queues as Redis Streams: XADD, XREADGROUP, XACK, XAUTOCLAIM after the claim timeout."""

    def __init__(self, url: str, namespace: str, claim_timeout_s: float, max_items: int) -> None:
        # Any: redis-py's stream replies are typed loosely; the shapes are read below.
        self._redis: Any = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._ns = f"{namespace}:console"
        self.claim_timeout_ms = int(claim_timeout_s * 1000)
        self.max_items = max_items
        self._groups: set[str] = set()

    def _key(self, queue: str, part: str = "stream") -> str:
        return f"{self._ns}:queue:{queue}:{part}"

    async def _group(self, queue: str) -> str:
        key = self._key(queue)
        if key not in self._groups:
            try:
                await self._redis.xgroup_create(key, _GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(key)
        return key

    async def add(self, queue: str, item: dict[str, Any], copies: int) -> None:
        """XADD the item `copies` times, trimming the stream near max_items."""
        key = await self._group(queue)
        raw = orjson.dumps(item)
        for _ in range(copies):
            await self._redis.xadd(key, {"item": raw}, maxlen=self.max_items, approximate=True)

    async def _seen(self, queue: str, item_id: str) -> set[str]:
        got = await self._redis.smembers(self._key(queue, f"seen:{item_id}"))
        return {m.decode() for m in got}

    async def _release(self, key: str, entry_ids: list[str]) -> None:
        # Idle past the timeout: the next XAUTOCLAIM (by any reviewer) picks them up.
        if entry_ids:
            await self._redis.xclaim(
                key, _GROUP, _RELEASED, 0, entry_ids, idle=self.claim_timeout_ms + 1
            )

    async def claim(self, queue: str, reviewer: str, now: float) -> Claim | None:
        """A reviewer's own pending entry, else a timed-out one, else a new one."""
        key = await self._group(queue)
        mine = await self._redis.xpending_range(key, _GROUP, "-", "+", 1, consumername=reviewer)
        if mine:
            entry = await self._redis.xrange(key, mine[0]["message_id"], mine[0]["message_id"])
            if entry:
                return Claim(_id(entry[0][0]), orjson.loads(entry[0][1][b"item"]))
        cursor = "0-0"
        while True:
            answer = await self._redis.xautoclaim(
                key, _GROUP, reviewer, self.claim_timeout_ms, cursor, count=50
            )
            cursor, entries = _id(answer[0]), answer[1]
            found = await self._pick(queue, key, reviewer, entries)
            if found is not None:
                return found
            if cursor == "0-0":
                break
        while True:
            got = await self._redis.xreadgroup(_GROUP, reviewer, {key: ">"}, count=50)
            entries = got[0][1] if got else []
            if not entries:
                return None
            found = await self._pick(queue, key, reviewer, entries)
            if found is not None:
                return found

    async def _pick(self, queue: str, key: str, reviewer: str, entries: list[Any]) -> Claim | None:
        chosen: Claim | None = None
        passed: list[str] = []
        for entry_id, fields in entries:
            if fields is None:  # trimmed away while pending
                await self._redis.xack(key, _GROUP, entry_id)
                continue
            item = orjson.loads(fields[b"item"])
            if chosen is None and reviewer not in await self._seen(queue, item["item_id"]):
                chosen = Claim(_id(entry_id), item)
                seen = self._key(queue, f"seen:{item['item_id']}")
                await self._redis.sadd(seen, reviewer)
                await self._redis.expire(seen, 30 * 86400)
            else:
                passed.append(_id(entry_id))
        await self._release(key, passed)
        return chosen

    async def ack(
        self, queue: str, claim: Claim, reviewer: str, label: str | None, now: float
    ) -> None:
        """XACK a labelled entry; a skipped one is released for someone else."""
        key = await self._group(queue)
        if label is None:
            await self._release(key, [claim.entry_id])
            return
        await self._redis.xack(key, _GROUP, claim.entry_id)
        await self._redis.xdel(key, claim.entry_id)
        labels = self._key(queue, "labels")
        record = orjson.dumps([claim.item["item_id"], reviewer, label])
        await self._redis.lpush(labels, record)
        await self._redis.ltrim(labels, 0, _KEEP_LABELS - 1)
        await self._redis.incr(self._key(queue, "labelled"))

    async def stats(self, queue: str, now: float) -> QueueStats:
        """XLEN, XPENDING and the labels kept for agreement."""
        key = await self._group(queue)
        length = await self._redis.xlen(key)
        pending = await self._redis.xpending(key, _GROUP)
        claimed = int(pending["pending"])
        labelled = int(await self._redis.get(self._key(queue, "labelled")) or 0)
        raw = await self._redis.lrange(self._key(queue, "labels"), 0, -1)
        kappa, pairs = _kappa(tuple(orjson.loads(r)) for r in reversed(raw))
        return QueueStats(max(0, length - claimed), claimed, labelled, kappa, pairs)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
