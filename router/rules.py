"""Targeting rules: one discriminated union, evaluated in order before the split."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from router.model import EvalContext


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowUnits(_Rule):
    """These unit ids get `variant`."""

    kind: Literal["allow_units"] = "allow_units"
    units: frozenset[str] = Field(min_length=1)
    variant: str

    def matches(self, ctx: EvalContext) -> bool:
        """True when the unit is listed."""
        return ctx.unit_id in self.units

    def target(self, control: str) -> str:
        """The variant a matching context gets."""
        return self.variant


class DenyUnits(_Rule):
    """These unit ids are held out of the experiment: they get the control variant."""

    kind: Literal["deny_units"] = "deny_units"
    units: frozenset[str] = Field(min_length=1)

    def matches(self, ctx: EvalContext) -> bool:
        """True when the unit is listed."""
        return ctx.unit_id in self.units

    def target(self, control: str) -> str:
        """Held out: the control variant."""
        return control


class AllowApps(_Rule):
    """These app ids get `variant`."""

    kind: Literal["allow_apps"] = "allow_apps"
    apps: frozenset[str] = Field(min_length=1)
    variant: str

    def matches(self, ctx: EvalContext) -> bool:
        """True when the app is listed."""
        return ctx.app_id in self.apps

    def target(self, control: str) -> str:
        """The variant a matching context gets."""
        return self.variant


class DenyApps(_Rule):
    """These app ids are held out of the experiment: they get the control variant."""

    kind: Literal["deny_apps"] = "deny_apps"
    apps: frozenset[str] = Field(min_length=1)

    def matches(self, ctx: EvalContext) -> bool:
        """True when the app is listed."""
        return ctx.app_id in self.apps

    def target(self, control: str) -> str:
        """Held out: the control variant."""
        return control


class AttrEquals(_Rule):
    """A request attribute equal to `value` gets `variant`."""

    kind: Literal["attr_equals"] = "attr_equals"
    attribute: str = Field(min_length=1)
    value: str
    variant: str

    def matches(self, ctx: EvalContext) -> bool:
        """True when the attribute is present and equal."""
        return ctx.attributes.get(self.attribute) == self.value

    def target(self, control: str) -> str:
        """The variant a matching context gets."""
        return self.variant


class AttrIn(_Rule):
    """A request attribute among `values` gets `variant`."""

    kind: Literal["attr_in"] = "attr_in"
    attribute: str = Field(min_length=1)
    values: frozenset[str] = Field(min_length=1)
    variant: str

    def matches(self, ctx: EvalContext) -> bool:
        """True when the attribute is present and listed."""
        value = ctx.attributes.get(self.attribute)
        return value is not None and value in self.values

    def target(self, control: str) -> str:
        """The variant a matching context gets."""
        return self.variant


class ForceVariant(_Rule):
    """QA units or apps pinned to `variant`; its own reason keeps them out of experiment stats."""

    kind: Literal["force_variant"] = "force_variant"
    units: frozenset[str] = frozenset()
    apps: frozenset[str] = frozenset()
    variant: str

    @model_validator(mode="after")
    def _names_someone(self) -> ForceVariant:
        if not self.units and not self.apps:
            raise ValueError("force_variant needs at least one of units or apps")
        return self

    def matches(self, ctx: EvalContext) -> bool:
        """True when the unit or the app is listed."""
        return ctx.unit_id in self.units or ctx.app_id in self.apps

    def target(self, control: str) -> str:
        """The variant a matching context gets."""
        return self.variant


Rule = Annotated[
    AllowUnits | DenyUnits | AllowApps | DenyApps | AttrEquals | AttrIn | ForceVariant,
    Field(discriminator="kind"),
]

RuleKind = Literal[
    "allow_units",
    "deny_units",
    "allow_apps",
    "deny_apps",
    "attr_equals",
    "attr_in",
    "force_variant",
]
