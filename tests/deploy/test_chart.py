"""The Helm chart renders with Helm's engine, validates as Kubernetes objects and is wired right."""

from __future__ import annotations

import filecmp
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
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
from tests.support.gateway import GatewayServer
from tests.support.gateway import pool as pool_section
from tests.support.sim import SimServer

MULTI = EXAMPLES / "multi-version.yaml"
SIMULATOR = EXAMPLES / "simulator.yaml"
GATEWAY_ONLY = EXAMPLES / "gateway-only.yaml"
# Every shipped values file, and everything gated on at once.
EVERYTHING: dict[str, Any] = {
    "simulator": {"enabled": True},
    "networkPolicy": {
        "enabled": True,
        "gatewayFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
        "upstreamFrom": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}],
    },
    "gateway": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "tls": [{"secretName": "loopgate-tls", "hosts": ["loopgate.example.com"]}],
        },
        "httpRoute": {"enabled": True, "hostnames": ["loopgate.example.com"]},
    },
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboards": {"enabled": True},
    },
}
VALUE_FILES: dict[str, Path | dict[str, Any] | None] = {
    "default": None,
    "multi-version": MULTI,
    "simulator": SIMULATOR,
    "gateway-only": GATEWAY_ONLY,
    "everything": EVERYTHING,
}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def case_values(case: str) -> dict[str, Any] | None:
    """The values of a named case."""
    source = VALUE_FILES[case]
    return load_values(source) if isinstance(source, Path) else source


@cache
def rendered(case: str) -> tuple[Obj, ...]:
    """Objects rendered for a named values case (rendered once per session)."""
    return tuple(objects(render(case_values(case))))


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
    report = helm.lint(CHART, case_values(case), strict=True)
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
         "PodDisruptionBudget", "Service", "Service", "ServiceAccount", "Pod"]
    )  # fmt: skip
    # The Pod is `helm test`'s, not part of the release.
    (pod,) = of_kind(objs("default"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


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
    values.update((case_values(case) or {}).get("gateway", {}))
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
    (container,) = controller["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "controller"
    # Its /metrics listens on the pod's address, where the Service and the monitor find it.
    assert args[args.index("--metrics-host") + 1] == "0.0.0.0"
    port = int(args[args.index("--metrics-port") + 1])
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    service = find(found, "Service", "lg-loopgate-controller")["spec"]
    assert service["ports"][0]["targetPort"] == "metrics"
    assert not [d for d in objs("default") if d["metadata"]["name"].endswith("-controller")]


def test_monitoring_objects_select_the_services() -> None:
    found = objs("multi-version")
    monitors = {m["metadata"]["name"]: m for m in of_kind(found, "ServiceMonitor")}
    assert set(monitors) == {"lg-loopgate-gateway", "lg-loopgate-vllm", "lg-loopgate-controller"}
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


def test_image_tag_follows_the_app_version() -> None:
    app_version = load_values(CHART / "Chart.yaml")["appVersion"]
    image = gateway_pod(objs("default"))["containers"][0]["image"]
    assert image == f"ghcr.io/loopgate/loopgate:{app_version}"
    pinned = objects(render({"image": {"tag": "9.9.9"}}))
    assert gateway_pod(pinned)["containers"][0]["image"].endswith(":9.9.9")
    # Everything that runs the Loopgate image runs the same one.
    sim = objects(render(load_values(SIMULATOR)))
    images = {
        c["image"]
        for o in sim
        if o["kind"] in ("Deployment", "Pod")
        for c in (o["spec"].get("template", {}).get("spec") or o["spec"])["containers"]
    }
    assert images == {f"ghcr.io/loopgate/loopgate:{app_version}"}


def test_ingress_and_httproute_are_off_by_default_and_reach_the_gateway() -> None:
    assert not of_kind(objs("default"), "Ingress")
    assert not of_kind(objs("default"), "HTTPRoute")
    found = objs("everything")
    service = find(found, "Service", "lg-loopgate-gateway")
    ingress = find(found, "Ingress", "lg-loopgate-gateway")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "lg-loopgate-gateway", "port": {"name": "http"}}
    assert service["spec"]["ports"][0]["name"] == "http"
    route = find(found, "HTTPRoute", "lg-loopgate-gateway")
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    assert backend == {"name": "lg-loopgate-gateway", "port": service["spec"]["ports"][0]["port"]}
    assert route["spec"]["hostnames"] == ["loopgate.example.com"]


def test_network_policies_let_only_the_gateway_reach_the_upstreams() -> None:
    assert not of_kind(objs("default"), "NetworkPolicy")
    found = objs("everything")
    gateway = find(found, "Deployment", "lg-loopgate-gateway")["spec"]["template"]["metadata"]
    vllm = find(found, "Deployment", "lg-loopgate-vllm-v1")["spec"]["template"]["metadata"]
    (test_pod,) = of_kind(found, "Pod")
    upstreams = find(found, "NetworkPolicy", "lg-loopgate-upstreams")["spec"]
    assert upstreams["podSelector"]["matchLabels"].items() <= vllm["labels"].items()
    peers = upstreams["ingress"][0]["from"]
    selectors = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p]
    assert [s for s in selectors if s.items() <= gateway["labels"].items()]
    assert not [s for s in selectors if s.items() <= test_pod["metadata"]["labels"].items()]
    assert {"namespaceSelector": {"matchLabels": {"team": "monitoring"}}} in peers
    front = find(found, "NetworkPolicy", "lg-loopgate-gateway")["spec"]
    assert front["podSelector"]["matchLabels"].items() <= gateway["labels"].items()
    peers = front["ingress"][0]["from"]
    # The listed peers, and the helm test Pod so that `helm test` passes with the policy on.
    assert {"namespaceSelector": {"matchLabels": {"team": "apps"}}} in peers
    assert [
        p
        for p in peers
        if "podSelector" in p
        and p["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()
    ]
    open_front = objects(render({"networkPolicy": {"enabled": True}}))
    rule = find(open_front, "NetworkPolicy", "lg-loopgate-gateway")["spec"]["ingress"][0]
    assert "from" not in rule  # no peers listed: anyone may call the gateway


def test_simulator_profile_runs_loopgate_sim_without_gpus() -> None:
    found = objs("simulator")
    services = {s["metadata"]["name"] for s in of_kind(found, "Service")}
    assert services == {
        "lg-loopgate-gateway",
        "lg-loopgate-vllm-policy-a",
        "lg-loopgate-vllm-policy-b",
    }
    for version in ("policy-a", "policy-b"):
        spec = find(found, "Deployment", f"lg-loopgate-vllm-{version}")["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        args = container["args"]
        assert args[0] == "sim"
        assert args[args.index("--model") + 1] == version
        assert "--ttft" in args
        assert "nvidia.com/gpu" not in json.dumps(spec)
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    pools = config_of(found)["pools"]
    assert pools["policy-a"]["endpoints"] == ["http://lg-loopgate-vllm-policy-a:8000"]


def test_gateway_only_deploys_no_vllm_and_keeps_the_endpoints() -> None:
    found = objs("gateway-only")
    assert [d["metadata"]["name"] for d in of_kind(found, "Deployment")] == ["lg-loopgate-gateway"]
    assert not of_kind(found, "NetworkPolicy")[1:]  # the gateway's only: no upstream pods
    pools = config_of(found)["pools"]
    values = load_values(GATEWAY_ONLY)["externalPools"]
    assert set(pools) == set(values)
    for name, pool in values.items():
        assert pools[name]["endpoints"] == pool["endpoints"]
        assert pools[name]["served_model"] == pool["servedModel"]
    assert pools["qwen-14b"]["timeouts"]["first_byte"] == 120
    assert pools["llama-8b"]["timeouts"]["first_byte"] == 60  # vllm.upstreamTimeouts


def test_external_pool_names_do_not_shadow_policy_versions() -> None:
    values = {"externalPools": {"v1": {"endpoints": ["http://x:8000"], "servedModel": "x"}}}
    with pytest.raises(helm.HelmRenderError, match="already makes a pool"):
        render(values)
    with pytest.raises(helm.HelmRenderError, match="no upstreams"):
        render({"policyVersions": []})


def test_helm_test_pod_asks_the_gateway_service() -> None:
    found = objs("simulator")
    (pod,) = of_kind(found, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    service = find(found, "Service", "lg-loopgate-gateway")
    port = service["spec"]["ports"][0]["port"]
    assert env["LOOPGATE_URL"] == f"http://lg-loopgate-gateway:{port}"
    assert env["LOOPGATE_TEST_MODEL"] == "assistant"
    assert container["args"] == [(CHART / "files/tests/chat.py").read_text()]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Without tests.model: the first model name.
    (pod,) = of_kind(objs("multi-version"), "Pod")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["LOOPGATE_TEST_MODEL"] == "llama-8b"
    assert not of_kind(objects(render({"tests": {"enabled": False}})), "Pod")


def test_helm_test_script_passes_against_a_live_gateway(
    gateway_factory: Callable[..., GatewayServer],
    sim_factory: Callable[..., SimServer],
    tmp_path: Path,
) -> None:
    """The hook's script, as the chart renders it, run against `loopgate serve` over a sim."""
    (pod,) = of_kind(objs("simulator"), "Pod")
    (container,) = pod["spec"]["containers"]
    sim = sim_factory(model="policy-a")
    gw = gateway_factory(
        {
            "pools": {"policy-a": pool_section(sim.base_url, served_model="policy-a")},
            "models": {"assistant": {"pool": "policy-a"}},
            "events": {"spool": {"dir": str(tmp_path / "spool")}},
        }
    )

    def run(model: str) -> subprocess.CompletedProcess[str]:
        env = {"LOOPGATE_URL": gw.base_url, "LOOPGATE_TEST_MODEL": model, "PATH": "/usr/bin"}
        return subprocess.run(
            [sys.executable, *container["command"][1:], *container["args"]],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    passed = run("assistant")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.splitlines()[0] == "readyz: 200"
    assert passed.stdout.rstrip().endswith("PASS")
    failed = run("no-such-model")
    assert failed.returncode != 0
    assert "404" in failed.stderr


def test_readme_values_table_matches_values_yaml() -> None:
    """Every key the README's table names exists, and every section of values.yaml is in it."""
    values = load_values(CHART / "values.yaml")
    table = (CHART / "README.md").read_text().split("## Values", 1)[1]
    keys = re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", table, re.MULTILINE)
    assert len(keys) > 60
    for key, default in keys:
        node: Any = values
        for part in key.split("."):
            assert isinstance(node, dict), key
            assert part in node, f"README names {key}: not a value"
            node = node[part]
        if default != "(see values.yaml)":
            shown = node if isinstance(node, str) and node else json.dumps(node)
            assert default == shown, (key, default, node)
    named = {k for k, _ in keys}
    for section, body in values.items():
        children = body if isinstance(body, dict) and body else {None: None}
        for child in children:
            key = section if child is None else f"{section}.{child}"
            assert any(n == key or n.startswith(key + ".") for n in named), key
