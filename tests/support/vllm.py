"""Real vLLM (CPU build) on loopback: the `vllm_server` session fixture and its helpers.

The first test that asks for it pays for the venv (about 3 min, once per machine), the tiny
model (seconds, once per recipe) and the server start (about a minute, once per session).
Tests using it carry `@pytest.mark.vllm` and a timeout that covers that first setup.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.tinymodel import model_root

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
BASE_MODEL = "tiny-base"
LORA_MODEL = "tiny-lora"
MAX_MODEL_LEN = 512
LORA_RANK = 8
# Few enough that a handful of concurrent requests queue, so tests can see
# vllm:num_requests_waiting move (the load-aware balancer reads it).
MAX_NUM_SEQS = 4
READY_TIMEOUT_S = 240.0
ENV_TIMEOUT_S = 1200.0
# The first test that asks for the fixture needs this much for the setup above.
SETUP_TIMEOUT_S = int(ENV_TIMEOUT_S + READY_TIMEOUT_S + 120)


@dataclass(frozen=True)
class VllmServer:
    """A running vLLM server: where it listens, its pid and the names it serves."""

    base_url: str
    pid: int
    port: int
    base_model: str
    lora_model: str
    max_model_len: int
    max_num_seqs: int
    model_dir: Path
    log_path: Path

    @property
    def api_base(self) -> str:
        """OpenAI SDK base_url (with /v1)."""
        return f"{self.base_url}/v1"


def vllm_python() -> Path:
    """Runs scripts/vllm-env.sh (a no-op when the venv matches its recipe); the venv's python."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "vllm-env.sh")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        timeout=ENV_TIMEOUT_S,
        check=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def build_tiny_model(python: Path) -> Path:
    """Builds (or finds) the tiny model and adapter; returns the folder holding base/ and lora/."""
    want = model_root(CACHE)
    CACHE.mkdir(parents=True, exist_ok=True)  # a fresh clone has none (the venv may live elsewhere)
    if not (want / "lora" / "adapter_config.json").exists():
        subprocess.run(
            [str(python), str(ROOT / "tests" / "support" / "tinymodel.py"), "--cache", str(CACHE)],
            cwd=CACHE,
            stdout=subprocess.DEVNULL,
            timeout=600,
            check=True,
        )
    return want


def server_env() -> dict[str, str]:
    """Environment for the server: offline, small KV cache, every cache under .cache/."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HOME=str(CACHE / "hf-home"),
        VLLM_CACHE_ROOT=str(CACHE / "vllm-cache"),
        # Allow vLLM's /v1/load_lora_adapter so later tests can add policy versions live.
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="1",
    )
    return env


def server_command(python: Path, models: Path, port: int) -> list[str]:
    """The api_server command line (`vllm serve` fails under the package name vllm-cpu)."""
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(models / "base"),
        "--served-model-name", BASE_MODEL,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN),
        # The tiny model is float32; vLLM's CPU default downcasts to bfloat16, whose kernels
        # die with SIGILL on some VMs that advertise AMX/AVX512-BF16 (seen 2026-11-26).
        "--dtype", "float32",
        "--enforce-eager",
        "--enable-lora",
        "--lora-modules", f"{LORA_MODEL}={models / 'lora'}",
        "--max-lora-rank", str(LORA_RANK),
        "--max-loras", "1",
        "--max-num-seqs", str(MAX_NUM_SEQS),
    ]  # fmt: skip


def completes(base_url: str) -> bool:
    """A real one-token completion: /health alone is green even when every request fails."""
    try:
        resp = httpx.post(
            f"{base_url}/v1/completions",
            json={"model": BASE_MODEL, "prompt": "hi", "max_tokens": 1},
            timeout=30.0,
        )
    except httpx.HTTPError:
        return False
    return resp.status_code == 200 and bool(resp.json().get("choices"))


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a server log, for failure messages."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the server we started, then SIGKILL its own process group if anything lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    # The engine core runs in a child process; the group was made for this server alone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_vllm(port: int | None = None) -> Iterator[VllmServer]:
    """Installs what is missing, starts vLLM on a free loopback port, waits, stops it after."""
    python = vllm_python()
    models = build_tiny_model(python)
    port = port or free_port()
    logs = CACHE / "vllm-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"server-{port}.log"
    with log_path.open("wb") as log:
        # cwd in .cache so `python -m` does not put the repo (gateway/, sim/...) on vLLM's path;
        # own session so that stop() can reach the engine child without touching anything else.
        proc = subprocess.Popen(
            server_command(python, models, port),
            cwd=CACHE,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not completes(base_url):
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                waited = f"{READY_TIMEOUT_S:.0f}s"
                raise TimeoutError(f"vLLM not ready in {waited}:\n{log_tail(log_path)}")
            time.sleep(1.0)
        yield VllmServer(
            base_url=base_url,
            pid=proc.pid,
            port=port,
            base_model=BASE_MODEL,
            lora_model=LORA_MODEL,
            max_model_len=MAX_MODEL_LEN,
            max_num_seqs=MAX_NUM_SEQS,
            model_dir=models,
            log_path=log_path,
        )
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VllmServer]:
    """One real vLLM per test session, serving BASE_MODEL and the LORA_MODEL adapter."""
    with running_vllm() as server:
        yield server
