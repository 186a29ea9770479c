"""Admin operations over any FlagStore, shared by the HTTP API and the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from router.errors import FlagNotFound
from router.evaluate import evaluate
from router.model import Assignment, EvalContext, Flag
from router.stores.base import FlagStore

ApplyAction = Literal["create", "update", "unchanged"]


async def current(store: FlagStore, key: str) -> Flag:
    """The flag as the store holds it now (FlagNotFound when absent)."""
    flag = await store.get(key)
    if flag is None:
        raise FlagNotFound(key)
    return flag


def _expected(flag: Flag, expected_version: int | None) -> int:
    # Without a stated version the change applies to what was just read (still checked).
    return flag.version if expected_version is None else expected_version


async def set_weights(
    store: FlagStore,
    key: str,
    weights: Mapping[str, float],
    expected_version: int | None,
    *,
    who: str,
) -> Flag:
    """Replace the named variants' weights (the others keep theirs)."""
    flag = await current(store, key)
    return await store.put(
        flag.with_weights(weights),
        _expected(flag, expected_version),
        who=who,
        action="set_weights",
    )


async def set_killed(
    store: FlagStore, key: str, killed: bool, expected_version: int | None, *, who: str
) -> Flag:
    """Flip the kill switch (everyone to control) on or off."""
    flag = await current(store, key)
    return await store.put(
        flag.replace(killed=killed),
        _expected(flag, expected_version),
        who=who,
        action="kill" if killed else "unkill",
    )


async def remove(store: FlagStore, key: str, expected_version: int | None, *, who: str) -> None:
    """Delete a flag (its model alias falls back to the static route)."""
    flag = await current(store, key)
    await store.delete(key, _expected(flag, expected_version), who=who)


def explain(store: FlagStore, key: str, ctx: EvalContext) -> Assignment:
    """What this replica assigns `ctx` under flag `key` right now, and why."""
    flag = store.snapshot().get(key)
    if flag is None:
        raise FlagNotFound(key)
    return evaluate(flag, ctx)


def _same(a: Flag, b: Flag) -> bool:
    return a.model_dump(exclude={"version"}) == b.model_dump(exclude={"version"})


async def apply(
    store: FlagStore, flags: Iterable[Flag], *, who: str
) -> list[tuple[str, ApplyAction, int]]:
    """Make the store hold `flags` (create or update; others untouched): (key, action, version)."""
    results: list[tuple[str, ApplyAction, int]] = []
    for flag in flags:
        stored = await store.get(flag.key)
        if stored is None:
            created = await store.put(flag, None, who=who)
            results.append((flag.key, "create", created.version))
        elif _same(stored, flag):
            results.append((flag.key, "unchanged", stored.version))
        else:
            updated = await store.put(flag, stored.version, who=who)
            results.append((flag.key, "update", updated.version))
    return results
