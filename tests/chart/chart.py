"""Render the Helm chart and walk what it produced: the objects, their pod templates, their containers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "mlflow-stack"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE = "t"
NAMESPACE = "ml"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob")

Manifest = dict[str, Any]


def helm() -> str:
    found = shutil.which("helm")
    if found is None:
        raise RuntimeError("helm is not installed: run ../shared/ci/k8s-tools.sh (see README, Tests)")
    return found


def render_text(*values_files: Path, set_values: Sequence[str] = (), show_only: str | None = None) -> str:
    """`helm template` output; raises CalledProcessError (with helm's message in .stderr) on failure."""
    command = [helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for values in values_files:
        command += ["-f", str(values)]
    for assignment in set_values:
        # KEY=[json] or KEY={json} for lists and objects (`--set` would turn "1" into a number).
        command += ["--set-json" if ("=[" in assignment or "={" in assignment) else "--set", assignment]
    if show_only:
        command += ["--show-only", show_only]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def render(*values_files: Path, set_values: Sequence[str] = ()) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(render_text(*values_files, set_values=set_values)) if doc]


def render_error(*values_files: Path, set_values: Sequence[str] = ()) -> str:
    """helm's error message for a rendering that must fail; AssertionError when it renders."""
    try:
        render_text(*values_files, set_values=set_values)
    except subprocess.CalledProcessError as error:
        return str(error.stderr)
    raise AssertionError(f"rendering succeeded with {values_files} {list(set_values)}")


def assert_valid_for_kubernetes(text: str, kubernetes: str, tmp_path: Path) -> None:
    """kubernetes-validate --strict on rendered manifests, against that Kubernetes version's schemas."""
    validate = shutil.which("kubernetes-validate")
    assert validate, "kubernetes-validate is not installed: run ../shared/ci/k8s-tools.sh"
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(text)
    result = subprocess.run(
        [validate, "--strict", "--quiet", "-k", kubernetes, str(rendered)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()


def ci_values(name: str) -> Path:
    path = CHART / "ci" / f"{name}-values.yaml"
    assert path.exists(), path
    return path


# The chart's ci/ values files the tests render most (helm lint and the CI checks render every one of them).
BUNDLED = ci_values("bundled-evaluation")
EXTERNAL = ci_values("external-postgres-s3")
AUTH_INGRESS = ci_values("auth-ingress-tls")
GPU = ci_values("gpu-trainer-job")
OPENSHIFT = ci_values("openshift")
SEAWEEDFS = ci_values("bundled-seaweedfs")
OIDC = ci_values("oidc")


def find(manifests: list[Manifest], kind: str, component: str | None = None) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == kind
        and (component is None or m["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]


def one(manifests: list[Manifest], kind: str, component: str) -> Manifest:
    found = find(manifests, kind, component)
    assert len(found) == 1, f"expected one {kind} {component}, found {len(found)}"
    return found[0]


def pod_template(workload: Manifest) -> dict[str, Any]:
    """The pod template of a workload; a CronJob's is inside its job template."""
    spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    template: dict[str, Any] = spec["template"]
    return template


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(workload)["spec"]
    return spec


def workloads(manifests: list[Manifest]) -> Iterator[Manifest]:
    return (m for m in manifests if m["kind"] in WORKLOAD_KINDS)


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or the valueFrom mapping for variables read from a Secret."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}
