"""Flag validation: every mistake is refused with a message that names it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from router.config import DEFAULT_FLAGS_FILE, FlagsConfig
from router.errors import FlagValidationError
from router.model import parse_flag, validate_pools
from router.stores.flagfile import dump_flags, parse_flags
from tests.unit.router.conftest import POOLS, flag_data, make_flag


def _variants(*weights: float) -> list[dict[str, Any]]:
    return [{"name": f"v{i}", "pool": "policy-a", "weight": w} for i, w in enumerate(weights)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"variants": []}, "variants: Tuple should have at least 1 item"),
        (
            {"variants": [*_variants(1), {"name": "v0", "pool": "policy-b", "weight": 1}]},
            "variant name 'v0' is used twice",
        ),
        ({"variants": _variants(1, -1), "control": "v0"}, "greater than or equal to 0"),
        ({"variants": _variants(0, 0), "control": "v0"}, "weights must sum to a positive total"),
        ({"control": "nope"}, "control 'nope' is not a variant (variants: control, canary)"),
        ({"default": "nope"}, "default 'nope' is not a variant"),
        (
            {"rules": [{"kind": "allow_units", "units": ["u"], "variant": "ghost"}]},
            "rules[0] (allow_units) names variant 'ghost', which is not a variant",
        ),
        ({"rules": [{"kind": "teleport"}]}, "rules.0: Input tag 'teleport' found"),
        ({"rules": [{"kind": "force_variant", "variant": "canary"}]}, "at least one of units"),
        ({"key": "has space"}, "key: String should match pattern"),
        ({"killed": "maybe"}, "killed: Input should be a valid boolean"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_invalid_flags_are_refused_with_a_clear_message(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(FlagValidationError) as caught:
        parse_flag(flag_data(**changes))
    assert message in str(caught.value)
    assert str(caught.value).startswith("flag ")


def test_unknown_pool_is_refused_naming_the_known_ones() -> None:
    flag = make_flag(variants=[{"name": "control", "pool": "policy-x", "weight": 1}])
    with pytest.raises(FlagValidationError, match=r"variants\.0\.pool: unknown pool 'policy-x'"):
        validate_pools(flag, POOLS)
    validate_pools(make_flag(), POOLS)


def test_salt_defaults_to_the_key_and_version_to_one() -> None:
    flag = make_flag("bot-7")
    assert (flag.salt, flag.version, flag.enabled, flag.killed) == ("bot-7", 1, True, False)
    assert make_flag(salt="fresh").salt == "fresh"


def test_with_weights_replaces_named_weights_and_revalidates() -> None:
    flag = make_flag()
    assert [v.weight for v in flag.with_weights({"canary": 50}).variants] == [90, 50]
    with pytest.raises(FlagValidationError, match="no variant 'ghost'"):
        flag.with_weights({"ghost": 1})
    with pytest.raises(FlagValidationError, match="positive total"):
        flag.with_weights({"canary": 0, "control": 0})
    with pytest.raises(FlagValidationError, match="control 'x' is not a variant"):
        flag.replace(control="x")


def test_flags_file_round_trips() -> None:
    flags = {
        "a": make_flag("a", rules=[{"kind": "deny_apps", "apps": ["z", "b"]}]),
        "b": make_flag("b", killed=True, version=4),
    }
    assert parse_flags(dump_flags(flags.values()), POOLS, "test") == flags


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flags: [", "not valid YAML"),
        ("flags: 3", "expected `flags:` with a list or a mapping"),
        ("flags:\n  a: {key: b}", "flag listed as 'a' says key 'b'"),
        ("- {key: a}", "flags[0]: flag 'a': "),
    ],
)
def test_bad_flag_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(FlagValidationError, match=r"^f\.yaml") as caught:
        parse_flags(text, POOLS, "f.yaml")
    assert message in str(caught.value)


def test_list_form_and_duplicates() -> None:
    text = yaml.safe_dump([flag_data("a"), flag_data("a")])
    with pytest.raises(FlagValidationError, match="'a' is defined twice"):
        parse_flags(text, POOLS, "f")


def test_embedded_default_flags_match_the_embedded_pools() -> None:
    gateway_defaults = yaml.safe_load(
        (DEFAULT_FLAGS_FILE.parents[2] / "gateway" / "defaults.yaml").read_text()
    )
    flags = parse_flags(DEFAULT_FLAGS_FILE.read_text(), set(gateway_defaults["pools"]), "defaults")
    bot = flags["support-bot"]
    assert [(v.name, v.pool, v.weight) for v in bot.variants] == [
        ("control", "policy-a", 90),
        ("canary", "policy-b", 10),
    ]
    assert FlagsConfig().flags_file() == DEFAULT_FLAGS_FILE
