"""`loopgate controller --metrics-port P --metrics-host H`: its /metrics where Prometheus looks.

The controller runs as a subprocess on the shared Redis (a namespace of the test's own), with
one planned flag. Its /metrics listens on the address asked for (127.0.0.2 here: the default
127.0.0.1 would refuse there, and a pod needs 0.0.0.0), shows it leading, the canary share as a
0-1 ratio, every action of the plan at 0 until it happens, and no `_created` series.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ports import free_port, wait_until

HOST = "127.0.0.2"


def test_controller_serves_its_metrics_on_the_host_asked_for(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    flags = tmp_path / "flags.yaml"
    variants = [
        {"name": n, "pool": n, "served_model": f"policy-{n}", "weight": 50} for n in ("a", "b")
    ]
    flags.write_text(
        yaml.safe_dump({"flags": [{"key": "bot", "control": "a", "variants": variants}]})
    )
    pools = {n: {"endpoints": ["http://127.0.0.1:9"], "served_model": f"policy-{n}"} for n in "ab"}
    config = {
        "instance": "obs-controller-test",
        "pools": pools,
        "flags": {
            "source": "redis", "redis_url": redis_url, "namespace": redis_namespace,
            "path": str(flags), "seed_from_file": True,
        },
        "events": {"spool": {"dir": str(tmp_path / "spool")}},
        "experiments": {
            "redis_url": redis_url, "namespace": redis_namespace,
            "controller": {"interval_s": 0.5},
            "plans": [{"flag": "bot", "control": "a", "canary": "b", "steps": [20, 100]}],
        },
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = [
        sys.executable, "-m", "cli", "controller", "--config", str(path),
        "--metrics-port", str(port), "--metrics-host", HOST, "--log-level", "warning",
    ]  # fmt: skip
    log = tmp_path / "controller.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        samples: dict[str, float] = {}

        def scraped() -> bool:
            assert proc.poll() is None, log.read_text()
            with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=2) as answer:
                text = answer.read().decode()
            samples.clear()
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    key = s.name + "".join(f",{k}={v}" for k, v in sorted(s.labels.items()))
                    samples[key] = s.value
            return "loopgate_rollout_canary_share,flag=bot" in samples

        wait_until(scraped, 30, "the controller's first rollout action", interval=0.3)
        assert samples["loopgate_controller_leader"] == 1
        assert samples["loopgate_rollout_canary_share,flag=bot"] == 0.2
        assert samples["loopgate_rollout_actions_total,action=start,flag=bot"] == 1
        assert samples["loopgate_rollout_actions_total,action=rollback,flag=bot"] == 0
        assert not [k for k in samples if "_created" in k]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
