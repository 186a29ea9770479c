"""What the router and its stores raise; the HTTP edge maps each to an OpenAI error."""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error the router package raises on purpose."""


class FlagValidationError(RouterError, ValueError):
    """A flag (or a file of flags) is not valid; the message says which field and why."""


class FlagNotFound(RouterError, LookupError):
    """No flag with that key in the store."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no flag {key!r}")
        self.key = key


class ConflictError(RouterError):
    """An optimistic write lost: the stored version is not the one the writer stated."""

    def __init__(self, key: str, expected: int | None, actual: int | None) -> None:
        want = "no flag" if expected is None else f"version {expected}"
        have = "none" if actual is None else f"version {actual}"
        super().__init__(
            f"flag {key!r} changed underneath you: you stated {want}, the store has {have}; "
            "read it again and reapply your change"
        )
        self.key, self.expected, self.actual = key, expected, actual


class StoreUnavailable(RouterError):
    """The store's backend cannot be reached; reads keep serving the last snapshot."""


class ReadOnlyStore(RouterError):
    """This store does not take writes (for example the embedded default file)."""
