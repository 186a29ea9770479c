"""The Helm chart renders with Helm's engine, validates as Kubernetes objects and is wired right."""

from __future__ import annotations

import filecmp
import json
import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests.deploy.manifests import (
    CHART,
    DEPLOY,
    EXAMPLES,
    KUBE_VERSIONS,
    RULE_GROUPS,
    Obj,
    find,
    load_values,
    objects,
    of_kind,
    render,
    schema_errors,
)

MULTI = EXAMPLES / "multi-version.yaml"
VALUE_FILES = {"default": None, "multi-version": MULTI}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@cache
def rendered(case: str) -> tuple[Obj, ...]:
    """Objects rendered for a named values case (rendered once per session)."""
    path = VALUE_FILES[case]
    return tuple(objects(render(load_values(path) if path else None)))


def objs(case: str) -> list[Obj]:
    """A fresh list of the case's objects."""
    return list(rendered(case))


def gateway_pod(objs_: list[Obj]) -> Obj:
    """The gateway Deployment's pod spec."""
    spec: Obj = find(objs_, "Deployment", "lg-loopgate-gateway")["spec"]["template"]["spec"]
    return spec


def config_of(objs_: list[Obj]) -> Obj:
    """The gateway's config.yaml from the ConfigMap."""
    data = yaml.safe_load(find(objs_, "ConfigMap", "lg-loopgate-config")["data"]["config.yaml"])
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("case", sorted(VALUE_FILES))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_validates(case: str, kube_version: str) -> None:
    found = objs(case)
    assert found
    errors = [e for o in found for e in schema_errors(o, kube_version)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("case", sorted(VALUE_FILES))
def test_helm_lint_strict_has_no_errors(case: str) -> None:
    path = VALUE_FILES[case]
    report = helm.lint(CHART, load_values(path) if path else None, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("case", sorted(VALUE_FILES))
def test_object_names_are_unique_dns_labels(case: str) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs(case)]
    assert len(keys) == len(set(keys))
    assert all(DNS_LABEL.fullmatch(name) for _, name in keys), keys


def test_default_values_render_the_expected_objects() -> None:
    kinds = sorted(o["kind"] for o in objs("default"))
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "Deployment", "HorizontalPodAutoscaler",
         "PodDisruptionBudget", "Service", "Service", "ServiceAccount"]
    )  # fmt: skip


def test_gateway_pod_is_locked_down_and_probed() -> None:
    pod = gateway_pod(objs("default"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    sec = container["securityContext"]
    assert sec["readOnlyRootFilesystem"] is True
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["args"][:3] == ["serve", "--config", "/etc/loopgate/config.yaml"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    # Writable places on a read-only root: the spool and /tmp, both bounded emptyDirs.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/var/lib/loopgate/var/spool", "/tmp"):
        assert volumes[mounts[path]]["emptyDir"]["sizeLimit"]
    assert volumes[mounts["/etc/loopgate"]]["configMap"]["name"] == "lg-loopgate-config"


@pytest.mark.parametrize("case", sorted(VALUE_FILES))
def test_grace_period_outlasts_prestop_and_drain(case: str) -> None:
    pod = gateway_pod(objs(case))
    values = load_values(CHART / "values.yaml")["gateway"]
    path = VALUE_FILES[case]
    values.update((load_values(path) if path else {}).get("gateway", {}))
    (container,) = pod["containers"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == ["sleep", str(values["preStopSleepSeconds"])]
    floor = values["preStopSleepSeconds"] + values["drainSeconds"]
    assert pod["terminationGracePeriodSeconds"] > floor
    assert config_of(objs(case))["server"]["drain_seconds"] == values["drainSeconds"]


def test_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        dep = find(objects(render(values)), "Deployment", "lg-loopgate-gateway")
        value: str = dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum(None) == checksum(None)
    assert checksum(None) != checksum({"flags": {"file": {"flags": []}}})


def test_hpa_owns_replicas_and_pdb_guards_them() -> None:
    found = objs("default")
    assert "replicas" not in find(found, "Deployment", "lg-loopgate-gateway")["spec"]
    hpa = find(found, "HorizontalPodAutoscaler", "lg-loopgate-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "lg-loopgate-gateway"
    pdb = find(found, "PodDisruptionBudget", "lg-loopgate-gateway")
    gateway = find(found, "Deployment", "lg-loopgate-gateway")
    assert pdb["spec"]["selector"]["matchLabels"] == gateway["spec"]["selector"]["matchLabels"]
    fixed = objects(render({"gateway": {"autoscaling": {"enabled": False}, "replicas": 3}}))
    assert find(fixed, "Deployment", "lg-loopgate-gateway")["spec"]["replicas"] == 3
    assert not of_kind(fixed, "HorizontalPodAutoscaler")


def test_services_select_their_pods() -> None:
    found = objs("multi-version")
    deployments = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in of_kind(found, "Deployment")
    }
    for svc in of_kind(found, "Service"):
        selector = svc["spec"]["selector"]
        targets = [n for n, labels in deployments.items() if selector.items() <= labels.items()]
        assert targets == [svc["metadata"]["name"]], svc["metadata"]["name"]


def test_pools_are_wired_to_the_policy_version_services() -> None:
    found = objs("multi-version")
    services = {
        s["metadata"]["name"]: s["spec"]["ports"][0]["port"] for s in of_kind(found, "Service")
    }
    pools = config_of(found)["pools"]
    assert set(pools) == {"llama-8b", "qwen-14b", "qwen-14b-support-dpo"}
    for pool in pools.values():
        (url,) = pool["endpoints"]
        host, port = url.removeprefix("http://").split(":")
        assert services[host] == int(port)
    assert pools["qwen-14b-support-dpo"]["served_model"] == "support-dpo"
    assert pools["qwen-14b-support-dpo"]["endpoints"] == pools["qwen-14b"]["endpoints"]
    assert set(config_of(found)["models"]) == {"support-bot", "llama-8b", "qwen-14b"}
    flags = config_of(found)["flags"]
    assert flags["source"] == "redis"
    assert config_of(found)["events"]["kafka"]["bootstrap_servers"]


def test_default_models_offer_every_pool() -> None:
    assert config_of(objs("default"))["models"] == {"v1": {"pool": "v1"}}


def test_vllm_deployments_get_gpus_shm_lora_and_probes() -> None:
    found = objs("multi-version")
    qwen = find(found, "Deployment", "lg-loopgate-vllm-qwen-14b")["spec"]["template"]["spec"]
    (container,) = qwen["containers"]
    args = container["args"]
    assert container["image"].startswith("vllm/vllm-openai:")
    assert args[args.index("--model") + 1] == "Qwen/Qwen2.5-14B-Instruct"
    assert args[args.index("--served-model-name") + 1] == "qwen-14b"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert "--enable-lora" in args
    assert (
        args[args.index("--lora-modules") + 1] == "support-dpo=/models/adapters/support-dpo-2026-11"
    )
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert qwen["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert any(t["key"] == "nvidia.com/gpu" for t in qwen["tolerations"])
    shm = next(v for v in qwen["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    llama = find(found, "Deployment", "lg-loopgate-vllm-llama-8b")["spec"]
    assert llama["replicas"] == 2
    assert "--enable-lora" not in llama["template"]["spec"]["containers"][0]["args"]


def test_secrets_come_from_secret_refs_never_the_configmap() -> None:
    found = objs("multi-version")
    for deployment in ("lg-loopgate-gateway", "lg-loopgate-controller"):
        spec = find(found, "Deployment", deployment)["spec"]["template"]["spec"]
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        refs = {
            name: e["valueFrom"]["secretKeyRef"]["name"]
            for name, e in env.items()
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert refs == {
            "LOOPGATE_IDS__KEYS": "loopgate-ids",
            "LOOPGATE_FLAGS__ADMIN_TOKEN": "loopgate-admin",
            "LOOPGATE_AUTH__API_KEYS": "loopgate-apps",
        }
    assert not of_kind(found, "Secret")
    text = json.dumps(config_of(found))
    assert not any(word in text for word in ("signing", "token", "api_key", "password"))


def test_controller_is_a_single_replica() -> None:
    found = objs("multi-version")
    controller = find(found, "Deployment", "lg-loopgate-controller")["spec"]
    assert controller["replicas"] == 1
    assert controller["strategy"]["type"] == "Recreate"
    assert controller["template"]["spec"]["containers"][0]["args"][0] == "controller"
    assert not [d for d in objs("default") if d["metadata"]["name"].endswith("-controller")]


def test_monitoring_objects_select_the_services() -> None:
    found = objs("multi-version")
    monitors = {m["metadata"]["name"]: m for m in of_kind(found, "ServiceMonitor")}
    assert set(monitors) == {"lg-loopgate-gateway", "lg-loopgate-vllm"}
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [
            s
            for s in of_kind(found, "Service")
            if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert matched
        assert all(
            monitor["spec"]["endpoints"][0]["port"] == s["spec"]["ports"][0]["name"]
            for s in matched
        )


RULES = """\
groups:
  - name: loopgate-test
    rules:
      - alert: LoopgateDown
        expr: up{job="loopgate"} == 0
        for: 5m
        labels: {severity: page}
      - record: loopgate:requests:rate5m
        expr: sum(rate(loopgate_requests_total[5m]))
"""


def test_rules_and_dashboards_files_become_objects(tmp_path: Path) -> None:
    """A copy of the chart with a rules file and a dashboard renders both (whatever deploy/ has)."""
    copy = tmp_path / "loopgate"
    shutil.copytree(CHART, copy)
    (copy / "files/prometheus/rules/extra.yml").write_text(RULES)
    (copy / "files/grafana/dashboards/Extra_Board.json").write_text('{"title": "Extra"}\n')
    found = objects(render(load_values(MULTI), path=copy))
    (rule,) = of_kind(found, "PrometheusRule")
    assert "loopgate-test" in [g["name"] for g in rule["spec"]["groups"]]
    board = find(found, "ConfigMap", "lg-loopgate-dashboard-extra-board")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["metadata"]["namespace"] == "monitoring"
    assert json.loads(board["data"]["Extra_Board.json"]) == {"title": "Extra"}
    assert not [e for o in found for e in schema_errors(o, KUBE_VERSIONS[-1])]


def _files(folder: Path, patterns: tuple[str, ...]) -> dict[str, Path]:
    return {p.name: p for pattern in patterns for p in folder.glob(pattern)}


@pytest.mark.parametrize(
    ("deploy_dir", "chart_dir", "patterns"),
    [
        ("prometheus/rules", "files/prometheus/rules", ("*.yml", "*.yaml")),
        ("grafana/dashboards", "files/grafana/dashboards", ("*.json",)),
    ],
)
def test_chart_ships_the_same_files_as_deploy(
    deploy_dir: str, chart_dir: str, patterns: tuple[str, ...]
) -> None:
    """Helm cannot read outside the chart: the chart keeps copies (scripts/check-deploy.sh sync)."""
    source = _files(DEPLOY / deploy_dir, patterns)
    copies = _files(CHART / chart_dir, patterns)
    assert sorted(copies) == sorted(source), "run: scripts/check-deploy.sh sync"
    different = [n for n in source if not filecmp.cmp(source[n], copies[n], shallow=False)]
    assert not different, (
        f"differ from deploy/{deploy_dir}: {different}; run scripts/check-deploy.sh sync"
    )


def test_shipped_rules_and_dashboards_parse() -> None:
    for path in _files(DEPLOY / "prometheus/rules", ("*.yml", "*.yaml")).values():
        doc = yaml.safe_load(path.read_text())
        jsonschema.validate(doc.get("groups"), RULE_GROUPS)
    for path in _files(DEPLOY / "grafana/dashboards", ("*.json",)).values():
        assert isinstance(json.loads(path.read_text()), dict), path
