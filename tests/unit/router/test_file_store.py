"""File store against real files: edits move traffic, broken edits do not, writes are atomic."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from router.config import FlagsConfig
from router.errors import ConflictError, FlagNotFound, FlagValidationError, ReadOnlyStore
from router.evaluate import evaluate
from router.model import EvalContext
from router.stores import AuditRecord, FileFlagStore, dump_flags, open_store
from tests.unit.router.conftest import POOLS, make_flag

pytestmark = pytest.mark.anyio

UNITS = [EvalContext(unit_id=f"user-{i}", app_id="app", model="support-bot") for i in range(200)]


def _weights(control: float, canary: float) -> list[dict[str, object]]:
    return [
        {"name": "control", "pool": "policy-a", "weight": control},
        {"name": "canary", "pool": "policy-b", "weight": canary},
    ]


def _write(path: Path, control: float, canary: float, version: int) -> None:
    path.write_text(dump_flags([make_flag(variants=_weights(control, canary), version=version)]))


async def _eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _variants_served(store: FileFlagStore) -> set[str]:
    flag = store.snapshot().get("support-bot")
    assert flag is not None
    return {evaluate(flag, ctx).variant.name for ctx in UNITS}


async def test_editing_the_file_moves_traffic(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    _write(path, 1, 0, version=1)
    async with FileFlagStore.open(path, POOLS, lambda r: None, reload_interval=0.02) as store:
        assert _variants_served(store) == {"control"}
        _write(path, 0, 1, version=2)
        await _eventually(lambda: store.snapshot().flags["support-bot"].version == 2)
        assert _variants_served(store) == {"canary"}
        assert store.staleness_seconds() == 0.0


async def test_a_broken_edit_keeps_the_last_good_flags(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "flags.yaml"
    _write(path, 1, 0, version=1)
    async with FileFlagStore.open(path, POOLS, lambda r: None, reload_interval=0.02) as store:
        before = store.snapshot()
        caplog.set_level(logging.ERROR, logger="loopgate.flags.file")
        # Valid YAML, invalid flag: the weights no longer sum to a positive total.
        _write_text = path.read_text().replace("weight: 1.0", "weight: 0.0")
        path.write_text(_write_text)
        await _eventually(lambda: store.staleness_seconds() > 0)
        assert "rejected edit" in caplog.text
        assert "weights must sum to a positive total" in caplog.text
        assert store.snapshot() is before
        assert _variants_served(store) == {"control"}
        path.write_text("flags: [")  # and a YAML syntax error
        await asyncio.sleep(0.1)
        assert store.snapshot() is before
        _write(path, 0, 1, version=2)
        await _eventually(lambda: store.staleness_seconds() == 0.0)
        assert _variants_served(store) == {"canary"}


async def test_writes_are_versioned_atomic_and_audited(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    _write(path, 90, 10, version=1)
    records: list[AuditRecord] = []
    async with FileFlagStore.open(path, POOLS, records.append, reload_interval=60) as store:
        current = store.snapshot().flags["support-bot"]
        updated = await store.put(current.with_weights({"canary": 50}), 1, who="ana")
        assert updated.version == 2
        assert store.snapshot().flags["support-bot"] == updated
        assert sorted(os.listdir(tmp_path)) == ["flags.yaml"]  # no temp file left
        # A second process reading the file sees exactly what the store serves.
        async with FileFlagStore.open(path, POOLS, lambda r: None) as reader:
            assert reader.snapshot().flags == store.snapshot().flags

        with pytest.raises(ConflictError, match="you stated version 1, the store has version 2"):
            await store.put(current.replace(killed=True), 1, who="bob")
        with pytest.raises(ConflictError, match="you stated no flag"):
            await store.put(current, None, who="bob")
        with pytest.raises(FlagValidationError, match="unknown pool"):
            await store.put(
                make_flag("x", variants=[{"name": "control", "pool": "nope", "weight": 1}]),
                None,
                who="c",
            )

        created = await store.put(make_flag("other", version=9), None, who="ana")
        assert created.version == 1
        await store.delete("other", 1, who="ana")
        with pytest.raises(FlagNotFound):
            await store.delete("other", 1, who="ana")
        assert set(store.snapshot().flags) == {"support-bot"}

    assert [(r.who, r.action, r.flag_key) for r in records] == [
        ("ana", "update", "support-bot"),
        ("ana", "create", "other"),
        ("ana", "delete", "other"),
    ]
    assert records[0].before is not None
    assert records[0].before.version == 1
    assert records[0].after == updated


async def test_a_hand_edit_is_not_lost_by_a_write(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    _write(path, 90, 10, version=1)
    async with FileFlagStore.open(path, POOLS, lambda r: None, reload_interval=60) as store:
        _write(path, 80, 20, version=2)  # the poller has not seen it yet
        with pytest.raises(ConflictError):
            await store.put(make_flag(), 1, who="ana")
        assert store.snapshot().flags["support-bot"].version == 2


async def test_embedded_defaults_are_served_read_only() -> None:
    async with open_store(FlagsConfig(source="file"), {"policy-a", "policy-b"}) as store:
        flag = store.snapshot().get("support-bot")
        assert flag is not None
        with pytest.raises(ReadOnlyStore, match="read-only"):
            await store.put(flag, flag.version, who="ana")


async def test_a_bad_file_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("flags:\n  a: {control: x}\n")
    with pytest.raises(FlagValidationError, match=r"flags\.yaml"):
        async with open_store(FlagsConfig(source="file", path=path), POOLS):
            pass
