"""YAML flag files: parse (all or nothing, with readable errors) and write back."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import yaml

from router.errors import FlagValidationError
from router.model import Flag, parse_flag, validate_pools


def _bodies(raw: Any, source: str) -> list[Any]:
    if isinstance(raw, dict) and set(raw) == {"flags"}:
        raw = raw["flags"]
    if raw is None:
        return []
    if isinstance(raw, list):
        return raw
    if isinstance(raw, dict):
        bodies = []
        for key, body in raw.items():
            if not isinstance(body, dict):
                raise FlagValidationError(f"{source}: flag {key!r} must be a mapping")
            if "key" in body and body["key"] != key:
                raise FlagValidationError(
                    f"{source}: flag listed as {key!r} says key {body['key']!r}"
                )
            bodies.append({**body, "key": key})
        return bodies
    raise FlagValidationError(
        f"{source}: expected `flags:` with a list or a mapping of flags, got {type(raw).__name__}"
    )


def parse_flags(text: str, known_pools: Collection[str] | None, source: str) -> dict[str, Flag]:
    """Every flag in a YAML document, or FlagValidationError naming the first problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FlagValidationError(f"{source} is not valid YAML: {exc}") from exc
    flags: dict[str, Flag] = {}
    for i, body in enumerate(_bodies(raw, source)):
        try:
            flag = parse_flag(body)
            if known_pools is not None:
                validate_pools(flag, known_pools)
        except FlagValidationError as exc:
            raise FlagValidationError(f"{source}: flags[{i}]: {exc}") from exc
        if flag.key in flags:
            raise FlagValidationError(f"{source}: flag {flag.key!r} is defined twice")
        flags[flag.key] = flag
    return flags


def flag_body(flag: Flag) -> dict[str, Any]:
    """A flag as plain data, sets sorted so files and diffs are stable."""
    data = flag.model_dump(mode="json")
    for rule in data["rules"]:
        for name in ("units", "apps", "values"):
            if name in rule:
                rule[name] = sorted(rule[name])
    return data


def dump_flags(flags: Iterable[Flag]) -> str:
    """A YAML document `flags: {key: body}` that parse_flags reads back to the same flags."""
    doc: dict[str, Any] = {}
    for flag in sorted(flags, key=lambda f: f.key):
        body = flag_body(flag)
        del body["key"]
        doc[flag.key] = body
    return yaml.safe_dump({"flags": doc}, sort_keys=False, allow_unicode=True)
