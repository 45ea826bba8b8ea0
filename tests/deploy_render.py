"""The deployment as Kubernetes objects, rendered offline.

The chart is rendered by Helm's own template engine (the Helm Go SDK, shipped in the
``helm-python-sdk`` wheel; no ``helm`` binary, no cluster), so what the tests check is what
``helm install`` would send. CRDs come from the chart's ``crds/`` as Helm installs them: as they
are, not templated.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "nodeagent"
EXAMPLES = ROOT / "deploy" / "examples"
RELEASE = "nodeagent"

#: The NetworkAttachmentDefinition CRD (k8s.cni.cncf.io/v1) as the Network Plumbing Working
#: Group's de-facto standard defines it: ``spec.config`` holds the CNI configuration as a JSON
#: string. Multus installs it; the chart does not.
NAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata"],
    "properties": {
        "apiVersion": {"const": "k8s.cni.cncf.io/v1"},
        "kind": {"const": "NetworkAttachmentDefinition"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "properties": {"config": {"type": "string"}},
        },
    },
}


def documents(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML text (empty documents and comments dropped)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def crds() -> list[dict[str, Any]]:
    return [obj for path in sorted((CHART / "crds").glob("*.yaml"))
            for obj in documents(path.read_text())]


def render(values: dict[str, Any] | None = None, *, namespace: str = "default",
           release: str = RELEASE) -> list[dict[str, Any]]:
    """Every object ``helm install RELEASE deploy/helm/nodeagent`` with ``values`` creates.

    Helm errors (a value the chart's schema refuses, a ``required`` value missing) raise
    ``helm_python.HelmError`` with Helm's message.
    """
    import helm_python  # imported here: only the deployment tests need the native library

    with helm_python.Chart.load(str(CHART)) as chart:
        manifests = chart.render(copy.deepcopy(values or {}), name=release,
                                 namespace=namespace, is_install=True)
    objects = crds()
    for _source, text in sorted(manifests.items()):
        objects.extend(documents(text))
    return objects


def lint(values: dict[str, Any] | None = None, kube_version: str = "1.30.0") -> list[dict]:
    """``helm lint --strict`` findings: dicts with ``severity`` (1 info, 2 warning, 4 error),
    ``path`` and ``error``."""
    import helm_python

    report = helm_python.lint(str(CHART), copy.deepcopy(values or {}), strict=True,
                              kube_version=kube_version)
    return [*report["messages"], *({"severity": 4, "path": "", "error": e}
                                   for e in report["errors"])]


def cluster_role_rules(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rules of the agent's ClusterRole, as rendered."""
    return find(render(values), "ClusterRole")["rules"]


def find(objects: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``); AssertionError when not exactly one."""
    found = [o for o in objects
             if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name or '*'}"
    return found[0]


def example_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every object of deploy/examples, with the file it comes from."""
    return [(path, obj) for path in sorted(EXAMPLES.glob("*.yaml"))
            for obj in documents(path.read_text())]


def nad_config(nad: dict[str, Any]) -> dict[str, Any]:
    """The CNI configuration of a NetworkAttachmentDefinition (JSON in ``spec.config``)."""
    return json.loads(nad["spec"]["config"])


# -- CRD schemas as JSON Schema (the chart's tests and the replay API server validate with them)


def to_json_schema(schema: Any) -> Any:
    """An OpenAPI v3 (CRD) schema as JSON Schema: ``nullable`` becomes a "null" type."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: to_json_schema(v) for k, v in schema.items()
           if k != "nullable" and not k.startswith("x-kubernetes-")}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: to_json_schema(v) for k, v in schema["properties"].items()}
    if schema.get("nullable"):
        out["type"] = [schema["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date-time")(lambda value: not isinstance(value, str) or bool(RFC3339.match(value)))


def crd_validator(crd: dict[str, Any]) -> jsonschema.Draft7Validator:
    schema = to_json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema, format_checker=FORMATS)


def crd_named(name: str) -> dict[str, Any]:
    """The chart's CRD ``<plural>.<group>``."""
    (crd,) = [c for c in crds() if c["metadata"]["name"] == name]
    return crd
