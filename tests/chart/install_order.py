"""What Helm, Flux and Argo CD apply, in which order, and where each waits: computed from rendered objects.

A plan is a list of batches. A tool applies one batch's objects in the listed order, then waits until its
workloads are ready (Helm with --wait or --atomic, Flux's helm-controller, which runs Helm with its wait by
default, and Argo CD between sync waves and phases) before it applies the next batch.

- Helm (and Flux): each pre-install hook alone (by weight, then name), then every other object in Helm's
  kind order (helm.sh/helm pkg/release/v1/util/kind_sorter.go, InstallOrder), then each post-install hook.
- Argo CD renders the chart with `helm template` and ignores Helm's ordering: `helm.sh/hook` pre-install
  becomes a PreSync hook, post-install a PostSync hook (argo-cd docs, "Helm hooks"); within a phase, objects
  go by sync wave (argocd.argoproj.io/sync-wave, default 0), then kind (its own kind order, the same as
  Helm's for every kind this chart renders), then name; the next wave waits for the previous one's health.

`unmet_dependencies` finds the deadlocks of issue 23, item 1: a batch that waits for a pod which needs
something only a later batch applies (a server that waits for a post-install prepare; a prepare that runs in
PreSync, before the Postgres it needs exists).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.chart.chart import pod_spec

Manifest = dict[str, Any]

HELM_INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList",
    "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList",
    "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]  # fmt: skip
WAITED_KINDS = ("Deployment", "StatefulSet", "Job")


@dataclass
class Batch:
    label: str
    objects: list[Manifest]


def _kind_rank(manifest: Manifest) -> int:
    kind = manifest["kind"]
    return HELM_INSTALL_ORDER.index(kind) if kind in HELM_INSTALL_ORDER else len(HELM_INSTALL_ORDER)


def _hooks(manifest: Manifest) -> set[str]:
    value = manifest["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    return {hook.strip() for hook in value.split(",") if hook.strip()}


def _name(manifest: Manifest) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


def helm_plan(manifests: list[Manifest]) -> list[Batch]:
    """`helm install --wait` (also what Flux's helm-controller runs)."""

    def weight(manifest: Manifest) -> tuple[int, str]:
        return int(manifest["metadata"].get("annotations", {}).get("helm.sh/hook-weight", "0")), _name(manifest)

    pre = sorted((m for m in manifests if "pre-install" in _hooks(m)), key=weight)
    post = sorted((m for m in manifests if "post-install" in _hooks(m)), key=weight)
    main = [m for m in manifests if not _hooks(m)]
    # Helm sorts stably by kind: objects of one kind keep the order the templates rendered them in.
    main.sort(key=_kind_rank)
    return [
        *[Batch(f"pre-install hook {_name(m)}", [m]) for m in pre],
        Batch("release objects (then --wait)", main),
        *[Batch(f"post-install hook {_name(m)}", [m]) for m in post],
    ]


def argo_plan(manifests: list[Manifest]) -> list[Batch]:
    """An Argo CD sync of the same rendering."""

    def phase(manifest: Manifest) -> int:
        argo = manifest["metadata"].get("annotations", {}).get("argocd.argoproj.io/hook", "")
        hooks = _hooks(manifest)
        if argo == "PreSync" or hooks & {"pre-install", "pre-upgrade"}:
            return 0
        if argo == "PostSync" or hooks & {"post-install", "post-upgrade"}:
            return 2
        return 1

    def wave(manifest: Manifest) -> int:
        return int(manifest["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))

    keyed = sorted(manifests, key=lambda m: (phase(m), wave(m), _kind_rank(m), m["metadata"]["name"]))
    batches: list[Batch] = []
    for manifest in keyed:
        label = f"{['PreSync', 'Sync', 'PostSync'][phase(manifest)]} wave {wave(manifest)}"
        if not batches or batches[-1].label != label:
            batches.append(Batch(label, []))
        batches[-1].objects.append(manifest)
    return batches


def flux_plan(manifests: list[Manifest]) -> list[Batch]:
    """Flux's helm-controller installs with Helm's own action (wait on by default, hooks as Helm runs them)."""
    return helm_plan(manifests)


def _runs(workload: Manifest, step: str) -> bool:
    spec = pod_spec(workload)
    return any(step in container.get("args", []) for container in [*spec.get("initContainers", [])])


def _serves(workload: Manifest) -> bool:
    return any(c.get("args") == ["serve"] for c in pod_spec(workload)["containers"])


def _prepares(workload: Manifest) -> bool:
    return _runs(workload, "prepare") or any(c.get("args") == ["prepare"] for c in pod_spec(workload)["containers"])


def unmet_dependencies(plan: list[Batch]) -> list[str]:
    """Waits that can never end: a workload in a batch that needs a workload of a later batch.

    A tracking server needs `prepare` to have run (in its own init container, or a workload of this batch
    or an earlier one); `prepare` needs the bundled Postgres and MinIO (same batch or earlier).
    """
    problems = []
    seen: list[Manifest] = []
    for batch in plan:
        seen += [m for m in batch.objects if m["kind"] in WAITED_KINDS]
        for workload in (m for m in batch.objects if m["kind"] in WAITED_KINDS):
            if _serves(workload) and not _prepares(workload) and not any(_prepares(m) for m in seen):
                problems.append(f"{batch.label}: {_name(workload)} waits for a prepare that comes later")
            if _prepares(workload):
                for store in ("postgres", "minio"):
                    bundled = [m for plan_batch in plan for m in plan_batch.objects if _component(m) == store]
                    if bundled and not [m for m in seen if _component(m) == store and m["kind"] == "StatefulSet"]:
                        problems.append(f"{batch.label}: {_name(workload)} runs prepare before {store} exists")
    return problems


def _component(manifest: Manifest) -> str:
    return str(manifest["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))
