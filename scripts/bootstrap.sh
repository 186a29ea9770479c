#!/usr/bin/env bash
# Sourced by scripts/run and scripts/test: create .venv and install the project when
# pyproject.toml changed since the last install. Safe to run on a fresh machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${LOOPGATE_PYTHON:-python3}
extras=${LOOPGATE_EXTRAS:-dev,datasets,otlp}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[${extras}]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
