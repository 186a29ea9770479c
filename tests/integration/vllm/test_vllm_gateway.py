"""openai SDK -> `loopgate serve` -> real vLLM: what the gateway relays is what vLLM said.

Each answer through the gateway is compared with the same request sent to vLLM directly
(greedy or seeded, so both are deterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import yaml

from tests.support.gateway import GatewayServer, pool
from tests.support.vllm import SETUP_TIMEOUT_S, VllmServer

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(SETUP_TIMEOUT_S)]

HELLO: list[Any] = [{"role": "user", "content": "Hello, how can I help you today?"}]
BASE_ALIAS = "tiny"
LORA_ALIAS = "tiny-v2"
FLAG = "tiny-policy"


@pytest.fixture(scope="module")
def gateway(
    module_gateway_factory: Callable[..., GatewayServer],
    vllm_server: VllmServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> GatewayServer:
    """Both policy versions on the one vLLM, as static aliases and as a flag's variants."""
    flags = tmp_path_factory.mktemp("flags") / "flags.yaml"
    variants = [
        {"name": "base", "pool": "vllm", "served_model": vllm_server.base_model, "weight": 50},
        {"name": "lora", "pool": "vllm", "served_model": vllm_server.lora_model, "weight": 50},
    ]
    rules = [
        {"kind": "allow_units", "units": ["alice"], "variant": "lora"},
        {"kind": "allow_units", "units": ["bob"], "variant": "base"},
    ]
    flag = {"key": FLAG, "salt": "vllm-it", "control": "base", "variants": variants}
    flags.write_text(yaml.safe_dump({"flags": [{**flag, "rules": rules}]}))
    config = {
        "pools": {"vllm": pool(vllm_server.base_url, served_model=vllm_server.base_model)},
        "models": {
            BASE_ALIAS: {"pool": "vllm"},
            LORA_ALIAS: {"pool": "vllm", "served_model": vllm_server.lora_model},
        },
        "flags": {"source": "file", "path": str(flags)},
    }
    return module_gateway_factory(config)


@pytest.fixture
def via(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    """SDK client on the gateway."""
    with gateway.client(timeout=60) as sdk:
        yield sdk


@pytest.fixture
def direct(vllm_server: VllmServer) -> Iterator[openai.OpenAI]:
    """SDK client on vLLM itself."""
    with openai.OpenAI(base_url=vllm_server.api_base, api_key="unused", max_retries=0) as sdk:
        yield sdk


def chat_text(client: openai.OpenAI, model: str, **kw: Any) -> str:
    """Content of a non-streaming chat answer."""
    resp = client.chat.completions.create(model=model, messages=HELLO, **kw)
    return resp.choices[0].message.content or ""


def test_chat_is_relayed(
    via: openai.OpenAI, direct: openai.OpenAI, vllm_server: VllmServer
) -> None:
    got = via.chat.completions.create(model=BASE_ALIAS, messages=HELLO, max_tokens=8, seed=7)
    want = direct.chat.completions.create(
        model=vllm_server.base_model, messages=HELLO, max_tokens=8, seed=7
    )
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.choices[0].finish_reason == "length"
    assert got.usage == want.usage


def test_completion_is_relayed(
    via: openai.OpenAI, direct: openai.OpenAI, vllm_server: VllmServer
) -> None:
    kw: dict[str, Any] = {"prompt": "The quick brown fox", "max_tokens": 8, "seed": 7}
    got = via.completions.create(model=BASE_ALIAS, **kw)
    want = direct.completions.create(model=vllm_server.base_model, **kw)
    assert got.choices[0].text == want.choices[0].text
    assert got.usage == want.usage


def test_stream_with_usage_is_relayed(
    via: openai.OpenAI, direct: openai.OpenAI, vllm_server: VllmServer
) -> None:
    chunks = list(
        via.chat.completions.create(
            model=BASE_ALIAS,
            messages=HELLO,
            max_tokens=6,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    want = direct.chat.completions.create(
        model=vllm_server.base_model, messages=HELLO, max_tokens=6, seed=7
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == want.usage


def test_top_k_reaches_vllm(via: openai.OpenAI) -> None:
    greedy = chat_text(via, BASE_ALIAS, max_tokens=8, temperature=0)
    top1 = {
        chat_text(via, BASE_ALIAS, max_tokens=8, seed=s, extra_body={"top_k": 1}) for s in (1, 2)
    }
    assert top1 == {greedy}


def test_structured_outputs_reach_vllm(via: openai.OpenAI) -> None:
    choice = {"structured_outputs": {"choice": ["yes", "no"]}}
    got = {chat_text(via, BASE_ALIAS, max_tokens=8, seed=s, extra_body=choice) for s in range(4)}
    assert got <= {"yes", "no"}


def test_adapter_alias_reaches_the_lora(
    via: openai.OpenAI, direct: openai.OpenAI, vllm_server: VllmServer
) -> None:
    lora = chat_text(via, LORA_ALIAS, max_tokens=8, temperature=0)
    assert lora == chat_text(direct, vllm_server.lora_model, max_tokens=8, temperature=0)
    assert lora != chat_text(via, BASE_ALIAS, max_tokens=8, temperature=0)


@pytest.mark.parametrize(("unit", "variant"), [("alice", "lora"), ("bob", "base")])
def test_flag_picks_the_policy_version(
    via: openai.OpenAI, direct: openai.OpenAI, vllm_server: VllmServer, unit: str, variant: str
) -> None:
    raw = via.chat.completions.with_raw_response.create(
        model=FLAG, messages=HELLO, max_tokens=8, temperature=0, user=unit
    )
    served = vllm_server.lora_model if variant == "lora" else vllm_server.base_model
    assert raw.headers["x-loopgate-flag"] == FLAG
    assert raw.headers["x-loopgate-variant"] == variant
    got = raw.parse().choices[0].message.content
    assert got == chat_text(direct, served, max_tokens=8, temperature=0)


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_refusal_is_surfaced_unchanged(
    via: openai.OpenAI, direct: openai.OpenAI, vllm_server: VllmServer, stream: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as got:
        via.chat.completions.create(
            model=BASE_ALIAS, messages=HELLO, max_tokens=4096, stream=stream
        )
    with pytest.raises(openai.BadRequestError) as want:
        direct.chat.completions.create(
            model=vllm_server.base_model, messages=HELLO, max_tokens=4096, stream=stream
        )
    assert got.value.status_code == 400
    assert got.value.body == want.value.body
