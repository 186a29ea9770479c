"""Seeded users through the real gateway and a real broker; the built datasets hold exactly
the expected pairs and labels by rule, and Hugging Face `datasets` loads every file."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from feedback.datasets.export import load_manifest
from feedback.datasets.writers import columns
from tests.support.gateway import GatewayServer, pool
from tests.support.kafka import TansuBroker
from tests.support.sim import SimFactory

# kafka-python 3 warns (importlib.resources.read_text) on first import, inside the build.
pytestmark = pytest.mark.filterwarnings(
    "ignore:read_text is deprecated:DeprecationWarning",
    "ignore:open_text is deprecated:DeprecationWarning",
)

FLAG = "support-bot"
CONTROL_USERS = ["alice", "bob", "carol", "frank"]
CANARY_USERS = ["dave", "erin"]


def post_feedback(gateway: GatewayServer, body: dict[str, Any]) -> tuple[int, bytes]:
    """POST /v1/feedback as the app that got the answer; (status, body) whatever the status."""
    request = urllib.request.Request(
        gateway.v1 + "/feedback",
        data=orjson.dumps(body),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer test-key"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


@pytest.fixture
def gateway(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: SimFactory,
    kafka_broker: TansuBroker,
    tmp_path: Path,
) -> GatewayServer:
    """Two simulated policy versions under one flag, pinned per user; events to Kafka."""
    policy_a = sim_factory(model="policy-a", style="concise", seed=1)
    policy_b = sim_factory(model="policy-b", style="friendly", seed=2)
    flags = tmp_path / "flags.yaml"
    variants = [
        {"name": "control", "pool": "policy-a", "served_model": "policy-a", "weight": 50},
        {"name": "canary", "pool": "policy-b", "served_model": "policy-b", "weight": 50},
    ]
    rules = [
        {"kind": "allow_units", "units": CONTROL_USERS, "variant": "control"},
        {"kind": "allow_units", "units": CANARY_USERS, "variant": "canary"},
    ]
    flag = {"key": FLAG, "salt": "e2e", "control": "control", "variants": variants}
    flags.write_text(yaml.safe_dump({"flags": [{**flag, "rules": rules}]}))
    config = {
        "pools": {
            "policy-a": pool(policy_a.base_url, served_model="policy-a"),
            "policy-b": pool(policy_b.base_url, served_model="policy-b"),
        },
        "flags": {"source": "file", "path": str(flags)},
        "events": {
            "kafka": {"bootstrap_servers": [kafka_broker.bootstrap], "partitions": 3},
            "spool": {"dir": str(tmp_path / "spool")},
        },
        "ids": {"keys": ["k" * 32]},
    }
    return gateway_factory(config)


def test_seeded_feedback_becomes_exactly_the_expected_datasets(
    gateway: GatewayServer, kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    sdk = gateway.client()

    def ask(user: str, question: str, **extra: Any) -> tuple[str, str]:
        answer = sdk.chat.completions.create(
            model=FLAG,
            messages=[
                {"role": "system", "content": "You are a support bot."},
                {"role": "user", "content": question},
            ],
            user=user,
            **extra,
        )
        return answer.id, answer.choices[0].message.content or ""

    def judge(response_id: str, kind: str, **fields: Any) -> None:
        status, body = post_feedback(gateway, {"response_id": response_id, "kind": kind, **fields})
        assert status < 300, (kind, status, body)

    alice, alice_text = ask("alice", "How do I reset my password?")
    judge(alice, "edit", edited_text=alice_text + " Then check your inbox for the link.")
    bob_old, _ = ask("bob", "Where is my invoice?")
    judge(bob_old, "regenerate")
    bob_new, _ = ask("bob", "Where is my invoice?", seed=2)
    judge(bob_new, "thumbs_up")
    carol, _ = ask("carol", "Can I change my plan?")
    judge(carol, "thumbs_down")
    dave, _ = ask("dave", "Can I change my plan?")
    judge(dave, "thumbs_up")
    erin, _ = ask("erin", "How do I export my data?")
    judge(erin, "accept")
    frank, _ = ask("frank", "Is there a mobile app?")
    judge(frank, "reject")
    judge(frank, "rating", value=3)  # neutral: the reject stays the verdict
    assert gateway.stop() == 0  # SIGTERM: the lifespan drains the event pipeline into Kafka

    out = tmp_path / "dataset"
    result = CliRunner().invoke(
        _cli(),
        [
            "datasets", "build", "--kafka", kafka_broker.bootstrap, "--group", "e2e",
            "--state", str(tmp_path / "state"), "--out", str(out), "--test-fraction", "0",
            "--keys", str(tmp_path / "keys"),  # the gateway's content keys, beside its spool
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = load_manifest(out)
    assert doc["join"]["completions"] == 7, doc
    assert doc["join"]["feedback"] == 8, doc
    assert doc["counts"] == {
        "dpo": {"train": 3, "test": 0},
        "kto": {"train": 5, "test": 0},
        "sft": {"train": 2, "test": 0},
    }
    assert doc["by_rule"] == {
        "dpo": {"edit": 1, "regenerate": 1, "variants": 1},
        "kto": {"accept": 1, "reject": 1, "thumbs_down": 1, "thumbs_up": 2},
        "sft": {"accept": 1, "edit": 1},
    }
    assert doc["by_flag"]["kto"] == {FLAG: 5}
    dpo = [orjson.loads(line) for line in (out / "dpo" / "train.jsonl").read_bytes().splitlines()]
    by_rule = {row["rule"]: row for row in dpo}
    assert by_rule["edit"]["response_ids"] == [alice]
    assert by_rule["edit"]["chosen"][0]["content"].endswith("link.")
    assert by_rule["regenerate"]["response_ids"] == [bob_new, bob_old]
    assert by_rule["variants"]["response_ids"] == [dave, carol]
    assert (by_rule["variants"]["variant"], by_rule["variants"]["rejected_variant"]) == (
        "canary",
        "control",
    )
    kto = [orjson.loads(line) for line in (out / "kto" / "train.jsonl").read_bytes().splitlines()]
    assert {row["response_ids"][0]: row["label"] for row in kto} == {
        bob_new: True, carol: False, dave: True, erin: True, frank: False,
    }  # fmt: skip

    hf = pytest.importorskip("datasets")
    for kind in ("dpo", "kto", "sft"):
        for fmt, builder in (("jsonl", "json"), ("parquet", "parquet")):
            loaded = hf.load_dataset(
                builder,
                data_files={"train": str(out / kind / f"train.{fmt}")},
                cache_dir=str(tmp_path / "hf-cache"),
            )["train"]
            assert loaded.column_names == list(columns(kind))
            assert loaded.num_rows == doc["counts"][kind]["train"]


def _cli() -> Any:
    from cli import _register, app

    _register()
    return app


def test_the_demo_then_the_suggested_build_gives_loadable_dpo_kto_and_sft(
    tmp_path: Path,
) -> None:
    """Issue 21's path as a new user takes it: `loopgate demo`, then the command it prints."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    folder = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "400"}  # the suggested command on one line
    demo = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--folder", str(folder)],
        capture_output=True, text=True, timeout=200, env=env,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    found = re.search(r"(loopgate datasets build [^\n]+)", demo.stdout)
    assert found, demo.stdout[-2000:]
    suggested = shlex.split(found.group(1).strip())
    assert suggested[:3] == ["loopgate", "datasets", "build"]
    build = subprocess.run(
        [sys.executable, "-m", "cli", *suggested[1:]],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "WARNING" not in build.stdout, build.stdout
    out = tmp_path / suggested[suggested.index("--out") + 1]
    doc = load_manifest(out)
    assert doc["join"]["completions"] > 300, doc["join"]
    hf = pytest.importorskip("datasets")
    for kind in ("dpo", "kto", "sft"):
        assert doc["counts"][kind]["train"] > 0, doc["counts"]
        loaded = hf.load_dataset(str(out), kind, cache_dir=str(tmp_path / "hf-cache"))
        assert loaded["train"].num_rows == doc["counts"][kind]["train"]
        assert loaded["train"].column_names == list(columns(kind))
    # Popular prompts were judged by many users: their labels are majorities, not dropped.
    kto = hf.load_dataset(str(out), "kto", cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert max(kto["votes"]) + max(kto["votes_against"]) > 3
    assert doc["counts"]["kto"]["train"] > 50
