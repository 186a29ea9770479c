"""deploy/compose.yaml parses, references only files that exist, and wires the stack together."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import DEPLOY

COMPOSE = DEPLOY / "compose.yaml"
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} with an empty environment, applied to parsed strings."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    return value


def compose() -> dict[str, Any]:
    """The compose file as `docker compose config` would see it (anchors merged)."""
    data = interpolate(yaml.safe_load(COMPOSE.read_text()))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    """Services by name."""
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def bind_sources(service: dict[str, Any]) -> list[str]:
    """Host paths of bind mounts (short syntax starting with . or /)."""
    sources = []
    for volume in service.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            sources.append(source)
    return sources


def aliases(service: dict[str, Any]) -> set[str]:
    """Names the service answers to on the default network."""
    networks = service.get("networks") or {}
    default = networks.get("default") or {} if isinstance(networks, dict) else {}
    return set(default.get("aliases", []))


def test_top_level_keys_are_known() -> None:
    assert set(compose()) <= {"name", "services", "volumes", "networks", "configs", "secrets"} | {
        key for key in compose() if key.startswith("x-")
    }


def test_every_referenced_file_exists() -> None:
    for name, service in services().items():
        for source in bind_sources(service):
            assert (DEPLOY / source).resolve().exists(), f"{name}: {source}"
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for env_file in service.get("env_file", []):
            assert (DEPLOY / env_file).is_file(), f"{name}: {env_file}"


def test_named_volumes_are_declared() -> None:
    declared = set(compose().get("volumes", {}))
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: {source}"


def test_depends_on_names_services_of_the_default_profile() -> None:
    for name, service in services().items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services(), f"{name} -> {dependency}"
            assert not services()[dependency].get("profiles"), f"{name} -> {dependency}"


def test_gpu_profile_reserves_gpus_and_sim_profile_needs_none() -> None:
    by_profile: dict[str, list[str]] = {}
    for name, service in services().items():
        for profile in service.get("profiles", []):
            by_profile.setdefault(profile, []).append(name)
    assert sorted(by_profile) == ["gpu", "sim"]
    assert len(by_profile["gpu"]) == len(by_profile["sim"]) == 2
    for name in by_profile["gpu"]:
        service = services()[name]
        assert service["image"].startswith("vllm/vllm-openai:")
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
        assert service["shm_size"]
    for name in by_profile["sim"]:
        service = services()[name]
        assert service["command"][0] == "sim"
        assert "deploy" not in service


@pytest.mark.parametrize("profile", ["gpu", "sim"])
def test_gateway_pools_resolve_in_each_profile(profile: str) -> None:
    config = yaml.safe_load((DEPLOY / "config/compose-gateway.yaml").read_text())
    names: dict[str, int] = {}
    for name, service in services().items():
        if profile in service.get("profiles", [profile]):
            for host in {name} | aliases(service):
                names[host] = names.get(host, 0) + 1
    for pool in config["pools"].values():
        for url in pool["endpoints"]:
            host = url.removeprefix("http://").split(":")[0]
            assert names.get(host) == 1, f"{profile}: {host} answers {names.get(host, 0)} times"


def test_served_model_names_match_the_pools() -> None:
    config = yaml.safe_load((DEPLOY / "config/compose-gateway.yaml").read_text())
    served = {pool["served_model"] for pool in config["pools"].values()}
    for name, service in services().items():
        if "profiles" not in service:
            continue
        command = service["command"]
        flag = "--model" if command[0] == "sim" else "--served-model-name"
        assert command[command.index(flag) + 1] in served, name


def test_kafka_runs_in_kraft_mode() -> None:
    env = services()["kafka"]["environment"]
    assert services()["kafka"]["image"].startswith("apache/kafka:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "ZOOKEEPER" not in " ".join(env)
    assert services()["kafka"]["healthcheck"]


def test_prometheus_loads_the_rules_folder_and_scrapes_the_stack() -> None:
    mounts = dict(
        v.split(":")[:2] for v in services()["prometheus"]["volumes"] if v.startswith(".")
    )
    assert mounts["./prometheus/rules"] == "/etc/prometheus/rules"
    config_path = Path(mounts_key(mounts, "/etc/prometheus/prometheus.yml"))
    config = yaml.safe_load((DEPLOY / config_path).read_text())
    assert all(f.startswith("/etc/prometheus/rules/") for f in config["rule_files"])
    targets = {
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    assert {"gateway:8080", "policy-a:8000", "policy-b:8000", "controller:9102"} <= targets
    # The controller serves its /metrics where Prometheus looks for them.
    command = services()["controller"]["command"]
    assert command[command.index("--metrics-port") + 1] == "9102"
    assert command[command.index("--metrics-host") + 1] == "0.0.0.0"


def mounts_key(mounts: dict[str, str], target: str) -> str:
    """The host path mounted at target."""
    (source,) = [s for s, t in mounts.items() if t == target]
    return source


def test_grafana_provisions_the_datasource_and_the_dashboards_folder() -> None:
    mounts = dict(v.split(":")[:2] for v in services()["grafana"]["volumes"] if v.startswith("."))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = DEPLOY / "grafana/provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards/loopgate.yaml").read_text())[
        "providers"
    ]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


def test_gateway_drains_before_compose_kills_it() -> None:
    config = yaml.safe_load((DEPLOY / "config/compose-gateway.yaml").read_text())
    grace = int(services()["gateway"]["stop_grace_period"].removesuffix("s"))
    assert grace > config["server"]["drain_seconds"]
    assert any(v.endswith(":/var/lib/loopgate/var/spool") for v in services()["gateway"]["volumes"])


def test_promtool_accepts_the_scrape_config_with_the_rules(tmp_path: Path) -> None:
    """promtool (Debian's prometheus package, installed by scripts/test) checks config and rules."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    rules = DEPLOY / "prometheus/rules"
    config["rule_files"] = [str(rules / Path(f).name) for f in config["rule_files"]]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(copy)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
