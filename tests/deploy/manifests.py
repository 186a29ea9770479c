"""Render the chart with the real Helm engine and check objects against Kubernetes schemas."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "loopgate"
EXAMPLES = CHART / "examples"
DEPLOY = ROOT / "deploy"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas shipped.
KUBE_VERSIONS = ("1.25.0", "1.37.0")
RELEASE = "lg"
NAMESPACE = "serving"

Obj = dict[str, Any]


def load_values(path: Path) -> dict[str, Any]:
    """A values file as a mapping."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


@contextmanager
def chart(path: Path = CHART) -> Iterator[helm.Chart]:
    """The chart loaded by Helm's own loader."""
    with helm.Chart.load(path) as loaded:
        yield loaded


def render(values: dict[str, Any] | None = None, path: Path = CHART) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce (schema checked)."""
    with chart(path) as loaded:
        return loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[Obj]:
    """Every Kubernetes object in the rendered manifests."""
    found: list[Obj] = []
    for name, text in sorted(rendered.items()):
        if not name.endswith((".yaml", ".yml")):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    """The one object of that kind and name."""
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    """All objects of one kind."""
    return [o for o in objs if o["kind"] == kind]


# prometheus-operator CRDs are not in the Kubernetes schemas: these follow the fields of
# monitoring.coreos.com/v1 that the chart uses, strictly, plus Prometheus' rule syntax.
_METADATA: Obj = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_SELECTOR: Obj = {
    "type": "object",
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
    "additionalProperties": False,
}
SERVICE_MONITOR: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    },
}
_RULE: Obj = {
    "type": "object",
    "required": ["expr"],
    "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": {"type": ["string", "integer"]},
        "for": {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"},
        "keep_firing_for": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
RULE_GROUPS: Obj = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name", "rules"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "interval": {"type": "string"},
            "limit": {"type": "integer"},
            "rules": {"type": "array", "items": _RULE},
        },
    },
}
PROMETHEUS_RULE: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {"groups": RULE_GROUPS},
        },
    },
}
# Gateway API v1 HTTPRoute: the fields the chart uses, strictly (gateway.networking.k8s.io).
_NAME: Obj = {"type": "string", "minLength": 1, "maxLength": 253}
HTTP_ROUTE: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "kind": {"const": "HTTPRoute"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["parentRefs", "rules"],
            "additionalProperties": False,
            "properties": {
                "parentRefs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 32,
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "group": {"type": "string"},
                            "kind": {"type": "string"},
                            "namespace": _NAME,
                            "name": _NAME,
                            "sectionName": _NAME,
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        },
                    },
                },
                "hostnames": {"type": "array", "maxItems": 16, "items": _NAME},
                "rules": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matches": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "path": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "properties": {
                                                "type": {
                                                    "enum": [
                                                        "Exact",
                                                        "PathPrefix",
                                                        "RegularExpression",
                                                    ]
                                                },
                                                "value": {"type": "string", "pattern": "^/"},
                                            },
                                        }
                                    },
                                },
                            },
                            "backendRefs": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["name", "port"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "name": _NAME,
                                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                        "weight": {"type": "integer", "minimum": 0},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS: dict[str, Obj] = {
    "ServiceMonitor": SERVICE_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
    "HTTPRoute": HTTP_ROUTE,
}
_CRD_GROUPS = ("monitoring.coreos.com/", "gateway.networking.k8s.io/")


def schema_errors(obj: Obj, kube_version: str) -> list[str]:
    """Why the object does not validate (strictly: unknown fields are errors); empty if it does."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if str(obj.get("apiVersion", "")).startswith(_CRD_GROUPS):
        validator = jsonschema.Draft7Validator(CRD_SCHEMAS[obj["kind"]])
        return [
            f"{where} at {list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where} (k8s {kube_version}) at {list(exc.absolute_path)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {obj.get('apiVersion')} in k8s {kube_version}"]
    return []
