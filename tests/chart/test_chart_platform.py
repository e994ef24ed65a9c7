"""Issue 23: the chart as platform teams install it (GitOps tools, workload identity, umbrella charts,
monitoring, OpenShift), checked on what `helm template` renders."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import (
    AUTH_INGRESS,
    BUNDLED,
    CHART,
    CI_VALUES,
    EXTERNAL,
    GPU,
    NAMESPACE,
    OPENSHIFT,
    assert_valid_for_kubernetes,
    containers,
    env_of,
    find,
    helm,
    one,
    pod_spec,
    pod_template,
    render,
    render_error,
    render_text,
    workloads,
)
from tests.chart.install_order import argo_plan, flux_plan, helm_plan, unmet_dependencies
from tests.chart.netpol import Pod, can_connect

UMBRELLA = Path(__file__).parent / "umbrella"
ids = [path.stem for path in CI_VALUES]
PLANS = {"helm": helm_plan, "flux": flux_plan, "argocd": argo_plan}


# --- 1. install order: one batch for every tool, nothing waits for something applied later ---------------


@pytest.mark.parametrize("tool", sorted(PLANS))
@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_every_tool_applies_one_batch_without_a_deadlock(values: Path, tool: str) -> None:
    manifests = render(values)
    plan = PLANS[tool](manifests)
    assert unmet_dependencies(plan) == []
    # No hook, no wave: everything is applied at once and waited on together.
    assert len(plan) == 1, [batch.label for batch in plan]
    for manifest in manifests:
        annotations = manifest["metadata"].get("annotations", {})
        assert not [key for key in annotations if key.startswith(("helm.sh/hook", "argocd.argoproj.io/"))]


def test_the_deadlock_check_finds_the_old_hook_ordering() -> None:
    """The check above would have caught item 1: the old chart's prepare hook Job, put back by hand."""
    manifests = render(BUNDLED)
    deployment = one(manifests, "Deployment", "tracking")
    spec = pod_spec(deployment)
    prepare_container = spec.pop("initContainers")[0]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "t-mlflow-stack-prepare",
            "labels": {"app.kubernetes.io/component": "prepare"},
            "annotations": {"helm.sh/hook": "post-install,pre-upgrade"},
        },
        "spec": {"template": {"spec": {"containers": [prepare_container], "restartPolicy": "Never"}}},
    }
    old = [*manifests, job]
    assert any("waits for a prepare that comes later" in p for p in unmet_dependencies(helm_plan(old)))
    assert any("waits for a prepare that comes later" in p for p in unmet_dependencies(flux_plan(old)))
    # Argo CD runs post-install,pre-upgrade in PreSync: before Postgres exists.
    assert any("before postgres exists" in p for p in unmet_dependencies(argo_plan(old)))


def test_no_job_or_hook_deadline_outlives_helms_wait() -> None:
    """Item 8: the hook's 900 s deadline outlived Helm's 5-minute timeout; prepare now gives up before it."""
    for values in CI_VALUES:
        manifests = render(values)
        assert not find(manifests, "Job"), values.name
        (prepare,) = pod_spec(one(manifests, "Deployment", "tracking"))["initContainers"]
        assert int(env_of(prepare)["MLFLOW_BOOTSTRAP_TIMEOUT"]) < 300
    assert "prepare/timeoutSeconds" in render_error(BUNDLED, set_values=["prepare.timeoutSeconds=900"])


# --- 2. workload identity --------------------------------------------------------------------------------


def test_service_account_with_annotations_and_no_s3_keys() -> None:
    manifests = render(
        EXTERNAL,
        set_values=[
            "s3.existingSecret=",
            "s3.workloadIdentity=true",
            "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/mlflow",
            "trainer.job.enabled=true",
            "modelServer.enabled=true",
            "gc.enabled=true",
        ],
    )
    (account,) = find(manifests, "ServiceAccount")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mlflow"}
    assert account["automountServiceAccountToken"] is False
    for workload in workloads(manifests):
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        spec = pod_spec(workload)
        if component in ("tracking", "gc"):
            assert spec["serviceAccountName"] == account["metadata"]["name"], component
            for container in containers(workload):
                assert not [name for name in env_of(container) if name.startswith("AWS_") and "REGION" not in name]
        else:
            # Trainers and the model server never get the identity that can write the bucket.
            assert "serviceAccountName" not in spec, component


def test_an_existing_service_account_is_used_and_none_created() -> None:
    manifests = render(EXTERNAL, set_values=["serviceAccount.create=false", "serviceAccount.name=mlflow-irsa"])
    assert not find(manifests, "ServiceAccount")
    assert pod_spec(one(manifests, "Deployment", "tracking"))["serviceAccountName"] == "mlflow-irsa"
    assert "serviceAccount.name is required" in render_error(EXTERNAL, set_values=["serviceAccount.create=false"])


def test_workload_identity_is_refused_for_the_bundled_minio() -> None:
    error = render_error(BUNDLED, set_values=["s3.workloadIdentity=true"])
    assert "s3.workloadIdentity is for an external S3" in error


# --- 3. umbrella charts and escape hatches --------------------------------------------------------------


@pytest.mark.parametrize("kubernetes", ["1.30.0", "1.35.0"])
def test_an_umbrella_chart_with_global_values_renders_and_validates(kubernetes: str, tmp_path: Path) -> None:
    umbrella = tmp_path / "ml-platform"
    shutil.copytree(UMBRELLA, umbrella)
    chart = yaml.safe_load((umbrella / "Chart.yaml").read_text())
    chart["dependencies"][0]["repository"] = f"file://{CHART}"
    (umbrella / "Chart.yaml").write_text(yaml.safe_dump(chart))
    subprocess.run([helm(), "dependency", "build", str(umbrella)], check=True, capture_output=True, text=True)
    result = subprocess.run(
        [helm(), "template", "platform", str(umbrella), "--namespace", NAMESPACE],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    manifests = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    deployment = one(manifests, "Deployment", "tracking")
    # nameOverride under the alias: names and the name label follow it.
    assert deployment["metadata"]["name"] == "platform-mlflow-tracking"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "mlflow"
    template = pod_template(deployment)
    assert template["metadata"]["labels"]["team"] == "ml-platform"
    for container in containers(deployment):
        assert env_of(container)["REQUESTS_CA_BUNDLE"] == "/etc/ssl/private-ca/ca.crt"
        assert {"name": "private-ca", "mountPath": "/etc/ssl/private-ca", "readOnly": True} in container["volumeMounts"]
    assert {"name": "private-ca", "configMap": {"name": "private-ca"}} in template["spec"]["volumes"]
    assert_valid_for_kubernetes(result.stdout, kubernetes, tmp_path)


def test_escape_hatches_reach_every_pod_that_asks_for_them() -> None:
    extras = {
        "podLabels": {"cost-center": "ml"},
        "podAnnotations": {"example.com/owner": "ml"},
        "priorityClassName": "ml-high",
        "runtimeClassName": "gvisor",
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "extraVolumes": [{"name": "ca", "secret": {"secretName": "ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
    }
    spread = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}]
    set_values = [f"trackingServer.topologySpreadConstraints={json.dumps(spread)}"]
    for component in ("trackingServer", "modelServer", "trainer"):
        for key, value in extras.items():
            set_values.append(f"{component}.{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}")
    manifests = render(BUNDLED, GPU, set_values=set_values)
    for kind, component in (("Deployment", "tracking"), ("Deployment", "model-server"), ("CronJob", "trainer")):
        workload = one(manifests, kind, component)
        template = pod_template(workload)
        assert template["metadata"]["labels"]["cost-center"] == "ml", component
        assert template["metadata"]["annotations"] == {"example.com/owner": "ml"}, component
        assert template["spec"]["priorityClassName"] == "ml-high", component
        assert template["spec"]["runtimeClassName"] == "gvisor", component
        assert {"name": "ca", "secret": {"secretName": "ca"}} in template["spec"]["volumes"], component
        for container in containers(workload):
            assert env_of(container)["HTTPS_PROXY"] == "http://proxy:3128", component
            assert {"name": "ca", "mountPath": "/etc/ca", "readOnly": True} in container["volumeMounts"], component
    assert pod_spec(one(manifests, "Deployment", "tracking"))["topologySpreadConstraints"] == spread


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("trackingServer.extraEnvs=[]", "additional properties 'extraEnvs' not allowed"),
        ("trackingServer.extraEnv[0].value=x", "missing property 'name'"),
        ("networkPolicy.dnsPort=5353", "additional properties 'dnsPort' not allowed"),
        ("serviceAccount.anotations.a=b", "additional properties 'anotations' not allowed"),
    ],
)
def test_the_schema_stays_strict(assignment: str, message: str) -> None:
    assert message in render_error(BUNDLED, set_values=[assignment])


# --- 5. service port 80 ----------------------------------------------------------------------------------


def test_a_service_on_port_80_accepts_the_host_header_clients_send() -> None:
    manifests = render(*(BUNDLED, GPU), set_values=["trackingServer.service.port=80"])
    service = one(manifests, "Service", "tracking")
    assert service["spec"]["ports"][0]["port"] == 80
    allowed = env_of(pod_spec(one(manifests, "Deployment", "tracking"))["containers"][0])[
        "MLFLOW_SERVER_ALLOWED_HOSTS"
    ].split(",")
    name = service["metadata"]["name"]
    # requests and urllib leave a default port out of the Host header: `Host: <service>`.
    for host in (name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"):
        assert host in allowed and f"{host}:80" in allowed
    (trainer,) = containers(one(manifests, "CronJob", "trainer"))
    assert env_of(trainer)["MLFLOW_TRACKING_URI"] == f"http://{name}:80"


# --- 6. training outside the release -------------------------------------------------------------------


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_the_release_holds_no_job_and_renders_the_same_twice(values: Path) -> None:
    first, second = render_text(values), render_text(values)
    assert first == second, "a random name (the old Job suffix) makes GitOps tools see a change every time"
    manifests = render(values)
    assert not find(manifests, "Job")
    for cronjob in find(manifests, "CronJob", "trainer"):
        # Only ever run by `kubectl create job --from=cronjob/...`.
        assert cronjob["spec"]["suspend"] is True
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


# --- 7. auth database URI ------------------------------------------------------------------------------


def test_an_explicit_auth_database_uri_comes_from_a_secret() -> None:
    manifests = render(
        AUTH_INGRESS,
        set_values=["auth.databaseUriSecret=mlflow-auth-db", "auth.databaseUriKey=dsn"],
    )
    for container in containers(one(manifests, "Deployment", "tracking")):
        assert env_of(container)["MLFLOW_AUTH_DATABASE_URI"] == {
            "secretKeyRef": {"name": "mlflow-auth-db", "key": "dsn"}
        }
    assert "MLFLOW_AUTH_DATABASE_URI" not in env_of(containers(one(render(AUTH_INGRESS), "Deployment", "tracking"))[0])


# --- 8. upgrade and platform details -------------------------------------------------------------------


def test_the_client_user_is_given_to_prepare_only() -> None:
    deployment = one(render(AUTH_INGRESS), "Deployment", "tracking")
    (prepare,) = pod_spec(deployment)["initContainers"]
    env = env_of(prepare)
    assert env["MLFLOW_AUTH_CLIENT_USERNAME"] == {"secretKeyRef": {"name": "mlflow-trainer-login", "key": "username"}}
    assert env["MLFLOW_AUTH_CLIENT_PASSWORD"] == {"secretKeyRef": {"name": "mlflow-trainer-login", "key": "password"}}


def test_no_pdb_with_a_single_replica() -> None:
    assert not find(render(BUNDLED, set_values=["trackingServer.replicas=1"]), "PodDisruptionBudget")
    assert find(render(BUNDLED, set_values=["trackingServer.replicas=2"]), "PodDisruptionBudget")
    hpa_one = [
        "trackingServer.hpa.enabled=true",
        "trackingServer.hpa.minReplicas=1",
        "trackingServer.hpa.maxReplicas=3",
    ]
    assert not find(render(BUNDLED, set_values=hpa_one), "PodDisruptionBudget")


def test_a_stopping_replica_finishes_its_uploads() -> None:
    spec = pod_spec(one(render(BUNDLED), "Deployment", "tracking"))
    (server,) = spec["containers"]
    sleep = int(server["lifecycle"]["preStop"]["exec"]["command"][1])
    assert server["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert 0 < sleep < spec["terminationGracePeriodSeconds"]
    assert spec["terminationGracePeriodSeconds"] >= 120


def test_name_override_names_every_object() -> None:
    manifests = render(BUNDLED, set_values=["nameOverride=mlflow"])
    for manifest in manifests:
        assert manifest["metadata"]["name"].startswith("t-mlflow"), manifest["metadata"]["name"]
        assert "mlflow-stack" not in manifest["metadata"]["name"]
        assert manifest["metadata"]["labels"]["app.kubernetes.io/name"] == "mlflow"


def test_openshift_values_leave_the_uid_to_the_platform() -> None:
    manifests = render(OPENSHIFT)
    assert list(workloads(manifests))
    for workload in workloads(manifests):
        security = pod_spec(workload)["securityContext"]
        assert security["runAsNonRoot"] is True
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(security), workload["metadata"]["name"]
        for container in containers(workload):
            assert "runAsUser" not in container["securityContext"]


def _pods(manifests: list[dict[str, Any]]) -> dict[str, Pod]:
    namespace_labels = {"kubernetes.io/metadata.name": NAMESPACE}
    pods = {}
    for workload in workloads(manifests):
        labels = pod_template(workload)["metadata"]["labels"]
        pods[labels["app.kubernetes.io/component"]] = Pod("x", NAMESPACE, labels, namespace_labels)
    return pods


def _policies(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    policies = find(manifests, "NetworkPolicy")
    for policy in policies:
        policy["metadata"].setdefault("namespace", NAMESPACE)
    return policies


def test_openshift_dns_on_5353_is_allowed() -> None:
    dns = Pod(
        "dns-default",
        "openshift-dns",
        {"dns.operator.openshift.io/daemonset-dns": "default"},
        {"kubernetes.io/metadata.name": "openshift-dns"},
    )
    for values, open_ports in ((OPENSHIFT, {53, 5353}), (BUNDLED, {53})):
        manifests = render(values)
        pods, policies = _pods(manifests), _policies(manifests)
        for component, pod in pods.items():
            reachable = {port for port in (53, 5353) if can_connect(policies, pod, dns, port, "UDP")}
            if component in ("postgres", "minio"):
                assert reachable == set(), component  # the stores call nobody
            else:
                assert reachable == open_ports, (values.name, component, reachable)


def test_service_monitor_scrapes_the_tracking_service_and_prometheus_may() -> None:
    manifests = render(
        BUNDLED, set_values=["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=kps"]
    )
    monitor = one(manifests, "ServiceMonitor", "tracking")
    service = one(manifests, "Service", "tracking")
    # Structural check (kubernetes-validate has no schema for the operator's CRD).
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert not set(monitor["spec"]) - {"selector", "namespaceSelector", "endpoints"}
    assert not set(endpoint) - {"port", "path", "interval", "scrapeTimeout"}
    pods, policies = _pods(manifests), _policies(manifests)
    prometheus = Pod(
        "prometheus",
        "monitoring",
        {"app.kubernetes.io/name": "prometheus"},
        {"kubernetes.io/metadata.name": "monitoring"},
    )
    grafana = Pod(
        "grafana", "monitoring", {"app.kubernetes.io/name": "grafana"}, {"kubernetes.io/metadata.name": "monitoring"}
    )
    assert can_connect(policies, prometheus, pods["tracking"], 5000)
    assert not can_connect(policies, grafana, pods["tracking"], 5000)
    assert not can_connect(policies, prometheus, pods["postgres"], 5432)
    assert not find(render(BUNDLED), "ServiceMonitor")


def test_metrics_are_not_routed_through_the_ingress() -> None:
    manifests = render(AUTH_INGRESS, set_values=["auth.enabled=false"])
    ingress = one(manifests, "Ingress", "tracking")
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    (metrics,) = [p for p in paths if p["path"] == "/metrics"]
    assert metrics["pathType"] == "Prefix"
    blackhole = {s["metadata"]["name"]: s for s in find(manifests, "Service")}[metrics["backend"]["service"]["name"]]
    assert "selector" not in blackhole["spec"], (
        "a Service without a selector has no endpoints: the controller answers 503"
    )
    tracking = one(manifests, "Service", "tracking")["metadata"]["name"]
    assert [p["backend"]["service"]["name"] for p in paths if p["path"] == "/"] == [tracking]


def test_gc_cronjob_runs_stack_gc_against_the_service_and_reaches_the_stores() -> None:
    manifests = render(BUNDLED, set_values=["gc.enabled=true", "gc.olderThan=7d"])
    cronjob = one(manifests, "CronJob", "gc")
    (gc,) = containers(cronjob)
    assert gc["command"] == ["stack-gc"]
    assert gc["args"] == ["--older-than", "7d"]
    tracking = one(manifests, "Service", "tracking")["metadata"]["name"]
    assert env_of(gc)["STACK_GC_TRACKING_URI"] == f"http://{tracking}:5000"
    server_env = env_of(pod_spec(one(manifests, "Deployment", "tracking"))["containers"][0])
    assert {k: v for k, v in env_of(gc).items() if k != "STACK_GC_TRACKING_URI"} == server_env
    pods, policies = _pods(manifests), _policies(manifests)
    for destination, port in (("postgres", 5432), ("minio", 9000), ("tracking", 5000)):
        assert can_connect(policies, pods["gc"], pods[destination], port), destination
    assert not can_connect(policies, pods["trainer" if "trainer" in pods else "model-server"], pods["postgres"], 5432)
    assert "gc/olderThan" in render_error(BUNDLED, set_values=["gc.enabled=true", "gc.olderThan=a week"])


@pytest.mark.parametrize("kubernetes", ["1.30.0", "1.35.0"])
def test_every_optional_object_validates(kubernetes: str, tmp_path: Path) -> None:
    """gc, the ServiceMonitor, workload identity, the escape hatches, on at once (the ServiceMonitor is only
    warned about: kubernetes-validate has no schema for the operator's CRD, so it is checked structurally)."""
    text = render_text(
        EXTERNAL,
        set_values=[
            "s3.existingSecret=",
            "s3.workloadIdentity=true",
            "gc.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "trainer.job.enabled=true",
            "modelServer.enabled=true",
            "auth.enabled=true",
            "auth.existingSecret=a",
            "auth.clientSecret=c",
            "auth.databaseUriSecret=d",
            "ingress.enabled=true",
            'ingress.hosts=["mlflow.example.com"]',
            "ingress.tls.secretName=t",
            "trackingServer.priorityClassName=p",
            "trackingServer.runtimeClassName=r",
            'trackingServer.extraVolumes=[{"name": "ca", "configMap": {"name": "ca"}}]',
            'trackingServer.extraVolumeMounts=[{"name": "ca", "mountPath": "/etc/ca", "readOnly": true}]',
            'trackingServer.extraEnv=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]',
        ],
    )
    kinds = {doc["kind"] for doc in yaml.safe_load_all(text) if doc}
    assert {"CronJob", "ServiceMonitor", "ServiceAccount", "Ingress", "HorizontalPodAutoscaler"} <= kinds
    assert_valid_for_kubernetes(text, kubernetes, tmp_path)
