"""The chart's optional console: its own Deployment and Service, pointed at the gateway Service."""

from __future__ import annotations

import yaml

from tests.deploy.manifests import EXAMPLES, find, load_values, objects, render


def test_console_is_off_by_default_and_on_in_the_example() -> None:
    default = objects(render(None))
    assert not [o for o in default if o["metadata"]["name"].endswith("-console")]
    objs = objects(render(load_values(EXAMPLES / "multi-version.yaml")))
    deployment = find(objs, "Deployment", "lg-loopgate-console")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["console", "--gateway"]
    gateway_port = find(objs, "Service", "lg-loopgate-gateway")["spec"]["ports"][0]["port"]
    assert args[2] == f"http://lg-loopgate-gateway:{gateway_port}"
    service = find(objs, "Service", "lg-loopgate-console")
    assert service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    config = yaml.safe_load(find(objs, "ConfigMap", "lg-loopgate-config")["data"]["config.yaml"])
    redis = load_values(EXAMPLES / "multi-version.yaml")["redis"]["url"]
    assert config["console"] == {"redis_url": redis}  # queues shared with the gateways
