#!/usr/bin/env bash
# Deployment checks: the Helm chart (rendered by Helm's engine, validated against the
# Kubernetes schemas), values.schema.json, the Dockerfile (hadolint), deploy/compose.yaml.
#   scripts/check-deploy.sh          run tests/deploy (extra arguments go to pytest)
#   scripts/check-deploy.sh sync     copy deploy/'s rules and dashboards into the chart first
# Helm reads no file outside the chart, so helm/loopgate/files/ keeps copies of
# deploy/prometheus/rules/ and deploy/grafana/dashboards/; the tests fail when they differ.
set -euo pipefail
cd "$(dirname "$0")/.."

sync_dir() {
  local source=$1 target=$2
  shift 2
  mkdir -p "$target"
  for pattern in "$@"; do
    find "$target" -maxdepth 1 -type f -name "$pattern" -delete
    find "$source" -maxdepth 1 -type f -name "$pattern" -exec cp {} "$target/" \;
  done
}

if [ "${1:-}" = sync ]; then
  shift
  sync_dir deploy/prometheus/rules helm/loopgate/files/prometheus/rules '*.yml' '*.yaml'
  sync_dir deploy/grafana/dashboards helm/loopgate/files/grafana/dashboards '*.json'
  echo "synced deploy/ rules and dashboards into helm/loopgate/files/"
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import helm_python, kubernetes_validate" 2>/dev/null; then
  source scripts/bootstrap.sh
fi
exec .venv/bin/python -m pytest tests/deploy "$@"
