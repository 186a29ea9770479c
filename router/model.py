"""Flags and what evaluating one yields: frozen values, validated on the way in."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from router.errors import FlagValidationError
from router.rules import Rule, RuleKind

# Keys are model aliases apps ask for ("support-bot", "org/model-7b"): they also appear in
# Redis keys and admin URLs, so no whitespace or control characters.
FLAG_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"

Reason = Literal["disabled", "kill_switch", "qa_override", "split"] | RuleKind


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(_Frozen):
    """One arm of a flag: an upstream pool, the model name it serves, a weight."""

    name: str = Field(min_length=1, max_length=100)
    pool: str = Field(min_length=1)
    served_model: str | None = None
    weight: float = Field(ge=0, allow_inf_nan=False)


class Shadow(_Frozen):
    """A variant that also answers a sticky share of the flag's traffic, unseen by the client.

    The shadow's answer is recorded (a completion event with `role: shadow`, paired with the
    primary's response id) and never sent to the client; the primary never waits for it.
    """

    variant: str = Field(min_length=1, max_length=100)
    share: float = Field(gt=0, le=1, allow_inf_nan=False, description="of the flag's units")
    max_in_flight: int = Field(32, ge=1, le=10_000, description="per gateway process")
    timeout_s: float = Field(60.0, gt=0, le=3600, allow_inf_nan=False)
    stream: bool = False
    # Tokens (prompt estimate plus max_tokens) per minute, per process; None: no token budget.
    tokens_per_minute: int | None = Field(None, ge=1)


class Flag(_Frozen):
    """Which policy version serves a model alias, for whom, and in what share."""

    key: str = Field(pattern=FLAG_KEY_PATTERN)
    description: str = ""
    owner: str = ""
    variants: tuple[Variant, ...] = Field(min_length=1)
    control: str
    rules: tuple[Rule, ...] = ()
    salt: str = ""
    killed: bool = False
    enabled: bool = True
    version: int = Field(1, ge=1)
    default: str | None = None
    shadow: Shadow | None = None

    @model_validator(mode="before")
    @classmethod
    def _salt_defaults_to_key(cls, data: Any) -> Any:
        # An explicit salt lets a team re-randomise by changing it; the key is a stable default.
        if isinstance(data, dict) and not data.get("salt") and isinstance(data.get("key"), str):
            return {**data, "salt": data["key"]}
        return data

    @field_validator("variants")
    @classmethod
    def _unique_names_positive_total(cls, variants: tuple[Variant, ...]) -> tuple[Variant, ...]:
        seen: set[str] = set()
        for variant in variants:
            if variant.name in seen:
                raise ValueError(f"variant name {variant.name!r} is used twice")
            seen.add(variant.name)
        if sum(v.weight for v in variants) <= 0:
            raise ValueError("weights must sum to a positive total (at least one weight > 0)")
        return variants

    @model_validator(mode="after")
    def _names_resolve(self) -> Flag:
        names = {v.name for v in self.variants}
        known = ", ".join(v.name for v in self.variants)
        if self.control not in names:
            raise ValueError(f"control {self.control!r} is not a variant (variants: {known})")
        if self.default is not None and self.default not in names:
            raise ValueError(f"default {self.default!r} is not a variant (variants: {known})")
        for i, rule in enumerate(self.rules):
            target = rule.target(self.control)
            if target not in names:
                raise ValueError(
                    f"rules[{i}] ({rule.kind}) names variant {target!r}, "
                    f"which is not a variant (variants: {known})"
                )
        if self.shadow is not None:
            if self.shadow.variant not in names:
                raise ValueError(
                    f"shadow.variant {self.shadow.variant!r} is not a variant (variants: {known})"
                )
            if self.shadow.variant == self.control:
                raise ValueError(
                    f"shadow.variant {self.shadow.variant!r} is the control: a shadow mirrors "
                    "traffic to a candidate, not to the version that already answers it"
                )
        return self

    def variant(self, name: str) -> Variant:
        """The variant called `name` (KeyError if there is none)."""
        # A scan, not a cached index: a handful of variants, and model_copy could stale an index.
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    def has_variant(self, name: str) -> bool:
        """True when the flag has a variant called `name`."""
        return any(v.name == name for v in self.variants)

    def replace(self, **changes: Any) -> Flag:
        """A copy with `changes` applied and validated again (model_copy would skip checks)."""
        return parse_flag({**self.model_dump(mode="json"), **changes})

    def with_weights(self, weights: Mapping[str, float]) -> Flag:
        """A copy with the named variants' weights replaced; unknown names are refused."""
        names = [v.name for v in self.variants]
        unknown = sorted(set(weights) - set(names))
        if unknown:
            known = ", ".join(names)
            raise FlagValidationError(
                f"flag {self.key!r}: no variant {', '.join(map(repr, unknown))} (variants: {known})"
            )
        variants = [
            {**v.model_dump(mode="json"), "weight": weights.get(v.name, v.weight)}
            for v in self.variants
        ]
        return self.replace(variants=variants)


# EvalContext and Assignment are made once per request: plain frozen dataclasses, since a
# pydantic model costs several microseconds to build and they carry values already checked.
@dataclass(frozen=True, slots=True, kw_only=True)
class EvalContext:
    """Who is asking: the unit that sticks to a variant, the app, the model, attributes."""

    unit_id: str
    app_id: str
    model: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    qa_variant: str | None = None
    qa_allowed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """The variant a context gets from a flag, why, and under which flag version."""

    flag_key: str
    variant: Variant
    reason: Reason
    flag_version: int


def describe(error: ValidationError, what: str) -> str:
    """One readable message for a pydantic error: `what: field.path: message; ...`."""
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        msg = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{what}: " + "; ".join(parts)


def parse_flag(data: Any) -> Flag:
    """Validate `data` into a Flag, or raise FlagValidationError with a readable message."""
    try:
        return Flag.model_validate(data)
    except ValidationError as exc:
        key = data.get("key") if isinstance(data, dict) else None
        raise FlagValidationError(describe(exc, f"flag {key!r}" if key else "flag")) from exc


def validate_pools(flag: Flag, known_pools: Collection[str]) -> None:
    """Raise FlagValidationError when a variant names a pool the gateway does not have."""
    for i, variant in enumerate(flag.variants):
        if variant.pool not in known_pools:
            known = ", ".join(sorted(known_pools)) or "none"
            raise FlagValidationError(
                f"flag {flag.key!r}: variants.{i}.pool: unknown pool {variant.pool!r} "
                f"(known pools: {known})"
            )
