"""Real vLLM (CPU) serving a tiny one-label sequence classifier as a reward model.

The model is built here (tests/support/tinyscorer.py, nothing from a hub) and served with
`--runner pooling`. The test checks what /pooling returns, then has a gateway score live
answers (from a simulator policy) through it: every evaluation event carries exactly the
reward vLLM gives for the same conversation asked directly.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.rubric import conversation, reward_request
from tests.support.events import spooled_events
from tests.support.gateway import GatewayServer, pool
from tests.support.ports import free_port
from tests.support.sim import SimServer
from tests.support.vllm import (
    CACHE,
    READY_TIMEOUT_S,
    ROOT,
    SETUP_TIMEOUT_S,
    log_tail,
    server_env,
    stop,
    vllm_python,
)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(SETUP_TIMEOUT_S)]

SCORER = "tiny-rm"


def _scores(base_url: str) -> bool:
    try:
        resp = httpx.post(f"{base_url}/pooling", json={"model": SCORER, "input": "hi"}, timeout=30)
    except httpx.HTTPError:
        return False
    return resp.status_code == 200


@pytest.fixture(scope="module")
def scorer() -> Iterator[str]:
    """vLLM serving the tiny scorer on a free port; its base URL."""
    python = vllm_python()
    CACHE.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        [str(python), str(ROOT / "tests" / "support" / "tinyscorer.py"), "--cache", str(CACHE)],
        cwd=CACHE, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    model = built.stdout.strip().splitlines()[-1]
    port = free_port()
    log_path = CACHE / "vllm-logs" / f"scorer-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--served-model-name", SCORER, "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "512", "--dtype", "float32", "--enforce-eager",
        "--runner", "pooling", "--max-num-seqs", "4",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=CACHE, env=server_env(), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _scores(base_url):
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM scorer not ready:\n{log_tail(log_path)}")
            time.sleep(1.0)
        yield base_url
    finally:
        stop(proc)


def test_pooling_returns_one_raw_reward_and_classify_squashes_it(scorer: str) -> None:
    texts = ["Certainly.", "Great question! Happy to help!"]
    raw = httpx.post(
        f"{scorer}/pooling",
        json={"model": SCORER, "input": texts, "task": "classify", "use_activation": False},
        timeout=30,
    ).json()
    assert raw["object"] == "list"
    assert raw["id"].startswith("pooling-")
    assert [d["object"] for d in raw["data"]] == ["pooling", "pooling"]
    rewards = [d["data"][0] for d in raw["data"]]
    assert all(len(d["data"]) == 1 for d in raw["data"])
    assert rewards[0] != rewards[1]
    squashed = httpx.post(
        f"{scorer}/classify", json={"model": SCORER, "input": texts[0]}, timeout=30
    ).json()
    assert squashed["data"][0]["num_classes"] == 1
    assert squashed["data"][0]["probs"][0] == pytest.approx(1 / (1 + math.exp(-rewards[0])))


def test_the_gateway_records_the_real_models_scores(
    scorer: str,
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    policy = sim_factory(model="policy-a", ttft=0.0, itl=0.0)
    spool = tmp_path / "spool"
    config = {
        "pools": {
            "a": pool(policy.base_url, served_model="policy-a"),
            "rm": pool(scorer, served_model=SCORER),
        },
        "models": {"assistant": {"pool": "a"}},
        "events": {"spool": {"dir": str(spool)}},
        "evaluators": {"tiny": {"kind": "reward_model", "pool": "rm", "sample_rate": 1.0}},
    }
    gw = gateway_factory(config)
    client = gw.client()
    questions = ["How do I rotate keys?", "What is a canary release?", "Why use Kafka?"]
    for q in questions:
        client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": q}])
    assert gw.stop() == 0
    events = spooled_events(spool)
    answers = {e["body"]["response_id"]: e["body"] for e in events if e["type"] == "completion"}
    scored = [e["body"] for e in events if e["type"] == "evaluation"]
    assert sorted(b["response_id"] for b in scored) == sorted(answers)
    for body in scored:
        answer = answers[body["response_id"]]
        prompt = conversation({"messages": answer["request"]["messages"]}, 8000)
        direct = httpx.post(
            f"{scorer}/pooling",
            json=reward_request(SCORER, prompt, answer["response"]["text"], 8000),
            timeout=30,
        ).json()
        assert body["score"] == pytest.approx(direct["data"][0]["data"][0], rel=1e-5)
        assert body["version"].startswith(f"{SCORER}@")
