"""An immutable view of every flag a replica serves, and the lookup the request path uses."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from router.evaluate import evaluate
from router.model import Assignment, EvalContext, Flag


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """Flags by key at one store version; replaced whole, never changed in place."""

    flags: Mapping[str, Flag] = field(default_factory=lambda: MappingProxyType({}))
    version: int = 0

    @classmethod
    def of(cls, flags: Mapping[str, Flag] | list[Flag], version: int) -> FlagSnapshot:
        """Build a snapshot from flags (a list or a mapping by key)."""
        by_key = {f.key: f for f in flags} if isinstance(flags, list) else dict(flags)
        return cls(MappingProxyType(by_key), version)

    def get(self, key: str) -> Flag | None:
        """The flag governing model alias `key`, if any."""
        return self.flags.get(key)

    def __iter__(self) -> Iterator[Flag]:
        return iter(sorted(self.flags.values(), key=lambda f: f.key))

    def __len__(self) -> int:
        return len(self.flags)


def assign(snapshot: FlagSnapshot, model: str, ctx: EvalContext) -> Assignment | None:
    """The assignment for `model`, or None when no flag governs it (use the static route)."""
    flag = snapshot.flags.get(model)
    return None if flag is None else evaluate(flag, ctx)
