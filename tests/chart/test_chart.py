"""The chart's promises, checked on what `helm template` renders (no cluster needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.server.security_utils import should_block_cors_request

from mlflow_stack_server.settings import Knob, SettingsError, knobs
from tests.chart.chart import (
    AUTH_INGRESS,
    BUNDLED,
    CHART,
    CI_VALUES,
    EXTERNAL,
    GPU,
    NAMESPACE,
    OIDC,
    SEAWEEDFS,
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
from tests.chart.netpol import Pod, can_connect

# Every component at once: bundled stores, model server, a trainer Job.
EVERYTHING = (BUNDLED, GPU)
ids = [path.stem for path in CI_VALUES]


def test_ci_folder_has_the_five_value_sets() -> None:
    assert {p.name for p in CI_VALUES} >= {
        "bundled-evaluation-values.yaml",
        "external-postgres-s3-values.yaml",
        "auth-ingress-tls-values.yaml",
        "gpu-trainer-job-values.yaml",
        "openshift-values.yaml",
    }


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_helm_lint_strict(values: Path) -> None:
    result = subprocess.run([helm(), "lint", "--strict", str(CHART), "-f", str(values)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kubernetes", ["1.30.0", "1.35.0"])
@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_renders_valid_for_kubernetes(values: Path, kubernetes: str, tmp_path: Path) -> None:
    validate = shutil.which("kubernetes-validate")
    assert validate, "kubernetes-validate is not installed: run ../shared/ci/k8s-tools.sh"
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render_text(values))
    result = subprocess.run(
        [validate, "--strict", "--quiet", "-k", kubernetes, str(rendered)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()


# --- no default password: each missing Secret fails the rendering, naming the value to set -------------


@pytest.mark.parametrize(
    ("values", "unset", "named"),
    [
        (BUNDLED, ["postgresql.auth.existingSecret="], "postgresql.auth.existingSecret"),
        (BUNDLED, ["s3.existingSecret="], "s3.existingSecret"),
        (EXTERNAL, ["postgresql.external.existingSecret="], "postgresql.external.existingSecret"),
        (EXTERNAL, ["s3.existingSecret="], "s3.existingSecret"),
        (AUTH_INGRESS, ["auth.existingSecret="], "auth.existingSecret"),
        (AUTH_INGRESS, ["auth.clientSecret="], "auth.clientSecret"),
        (AUTH_INGRESS, ["ingress.tls.secretName="], "ingress.tls.secretName"),
        (GPU, ["trainer.data.existingClaim="], "trainer.data.existingClaim"),
    ],
)
def test_missing_required_secret_fails_naming_it(values: Path, unset: list[str], named: str) -> None:
    error = render_error(values, set_values=unset)
    assert f"{named} is required" in error


def test_chart_defaults_alone_do_not_render() -> None:
    assert "postgresql.auth.existingSecret is required" in render_error()


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_no_secret_value_is_written_into_a_manifest(values: Path) -> None:
    manifests = render(values)
    assert not find(manifests, "Secret"), "the chart must only reference existing Secrets"
    sensitive = ("PASSWORD", "SECRET", "ACCESS_KEY", "BACKEND_STORE_URI")
    for workload in workloads(manifests):
        for container in containers(workload):
            for name, value in env_of(container).items():
                if any(word in name for word in sensitive):
                    assert isinstance(value, dict) and "secretKeyRef" in value, (workload["metadata"]["name"], name)


# --- pods: non-root, read-only root filesystem, requests and limits --------------------------------------


@pytest.mark.parametrize("values", CI_VALUES, ids=ids)
def test_every_pod_runs_non_root_with_read_only_root_and_limits(values: Path) -> None:
    manifests = render(values)
    assert list(workloads(manifests))
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        # OpenShift's value set leaves the uid to the platform (its SCC picks a non-zero one).
        assert pod["securityContext"].get("runAsUser", 1) > 0, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in containers(workload):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert security.get("runAsUser", 1) != 0, name
            # Writable places a read-only root needs are volumes (emptyDir or a claim), never the image.
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)


# --- tracking server: replicas, PDB, HPA, probes, prepare/serve ------------------------------------------


def test_tracking_server_two_replicas_and_a_pdb_by_default() -> None:
    manifests = render(BUNDLED)
    deployment = one(manifests, "Deployment", "tracking")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = one(manifests, "PodDisruptionBudget", "tracking")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    # A voluntary eviction may take one replica, never all.
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert not find(manifests, "HorizontalPodAutoscaler")


def test_hpa_takes_over_the_replica_count() -> None:
    manifests = render(EXTERNAL)
    deployment = one(manifests, "Deployment", "tracking")
    hpa = one(manifests, "HorizontalPodAutoscaler", "tracking")
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_tracking_server_probes() -> None:
    deployment = one(render(BUNDLED), "Deployment", "tracking")
    (server,) = pod_spec(deployment)["containers"]
    assert server["args"] == ["serve"]
    # Readiness is the compose healthcheck: a real API call; under auth as a user that cannot exist, never
    # the admin (issue 23, item 4: a changed admin password made every replica unready).
    assert server["readinessProbe"]["exec"]["command"] == ["tracking-server-healthcheck", "--without-admin"]
    assert server["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    assert {"name": "http", "containerPort": 5000, "protocol": "TCP"} in server["ports"]


# What prepare reads beyond the server's settings: how long to wait, and the client login it creates.
PREPARE_ONLY = {"MLFLOW_BOOTSTRAP_TIMEOUT", "MLFLOW_AUTH_CLIENT_USERNAME", "MLFLOW_AUTH_CLIENT_PASSWORD"}


@pytest.mark.parametrize("values", [EXTERNAL, BUNDLED, AUTH_INGRESS, OIDC], ids=["external", "bundled", "auth", "oidc"])
def test_prepare_is_the_servers_init_container_with_their_settings(values: Path) -> None:
    """Issue 23, item 1: no hook Job, so nothing waits for a phase that waits for it."""
    manifests = render(values)
    assert not find(manifests, "Job")
    deployment = one(manifests, "Deployment", "tracking")
    (prepare,) = pod_spec(deployment)["initContainers"]
    (server,) = pod_spec(deployment)["containers"]
    assert prepare["name"] == "prepare"
    assert prepare["args"] == ["prepare"]
    assert prepare["image"] == server["image"]
    prepare_env = env_of(prepare)
    assert {k: v for k, v in prepare_env.items() if k not in PREPARE_ONLY} == env_of(server)
    assert not PREPARE_ONLY & set(env_of(server)), "the server needs neither the client's password nor the wait"
    assert {m["mountPath"] for m in prepare["volumeMounts"]} == {m["mountPath"] for m in server["volumeMounts"]}


def test_external_stores_come_from_the_given_secrets() -> None:
    env = env_of(containers(one(render(EXTERNAL), "Deployment", "tracking"))[0])
    assert env["MLFLOW_BACKEND_STORE_URI"] == {"secretKeyRef": {"name": "mlflow-database", "key": "uri"}}
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "mlflow-aws"
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "mlflow-aws"
    assert "MLFLOW_S3_ENDPOINT_URL" not in env  # AWS
    assert env["MLFLOW_ARTIFACTS_BUCKET"] == "acme-mlflow-artifacts"
    assert not {"POSTGRES_HOST", "POSTGRES_PASSWORD"} & set(env)


def test_bundled_stores_are_single_replica_statefulsets_with_the_compose_images() -> None:
    manifests = render(BUNDLED)
    postgres = one(manifests, "StatefulSet", "postgres")
    minio = one(manifests, "StatefulSet", "minio")
    assert postgres["spec"]["replicas"] == minio["spec"]["replicas"] == 1
    compose = (CHART.parents[2] / "docker-compose.yml").read_text()
    for workload in (postgres, minio):
        image = containers(workload)[0]["image"]
        assert f":-{image}}}" in compose, image  # the same default as compose's ${..._IMAGE:-...}
    env = env_of(containers(one(manifests, "Deployment", "tracking"))[0])
    services = {m["metadata"]["name"]: m for m in find(manifests, "Service")}
    # Clients use the ClusterIP Service; the StatefulSet's serviceName is its headless twin (issue 23, item 8).
    clients = {}
    for workload in (postgres, minio):
        headless = services[workload["spec"]["serviceName"]]
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
        clients[workload["metadata"]["name"]] = services[workload["spec"]["serviceName"].removesuffix("-headless")]
        assert "clusterIP" not in clients[workload["metadata"]["name"]]["spec"]
    assert env["POSTGRES_HOST"] == clients[postgres["metadata"]["name"]]["metadata"]["name"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == f"http://{clients[minio['metadata']['name']]['metadata']['name']}:9000"


def test_bundled_seaweedfs_replaces_minio_with_the_compose_image_and_flags() -> None:
    manifests = render(SEAWEEDFS)
    assert not [m for m in manifests if "minio" in m["metadata"]["name"]]
    seaweedfs = one(manifests, "StatefulSet", "seaweedfs")
    assert seaweedfs["spec"]["replicas"] == 1
    container = containers(seaweedfs)[0]
    overlay = (CHART.parents[2] / "docker-compose.seaweedfs.yml").read_text()
    assert f":-{container['image']}}}" in overlay, container["image"]  # compose's ${SEAWEEDFS_IMAGE:-...}
    # The same weed flags as compose (telemetry off, no recursive bucket delete, ...), in the same order.
    compose_flags = [
        line.strip()[2:] for line in overlay.split("    command:\n", 1)[1].split("    stop_grace")[0].splitlines()
    ]
    assert container["args"] == compose_flags
    env = env_of(container)
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": "mlflow-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {"name": "mlflow-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "s3"}
    assert pod_spec(seaweedfs)["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    services = {m["metadata"]["name"]: m for m in find(manifests, "Service")}
    client = services[seaweedfs["spec"]["serviceName"].removesuffix("-headless")]
    assert client["spec"]["ports"] == [{"name": "s3", "port": 8333, "targetPort": "s3", "protocol": "TCP"}]
    tracking_env = env_of(containers(one(manifests, "Deployment", "tracking"))[0])
    assert tracking_env["MLFLOW_S3_ENDPOINT_URL"] == f"http://{client['metadata']['name']}:8333"


def test_only_the_tracking_server_reaches_the_bundled_seaweedfs() -> None:
    manifests = render(SEAWEEDFS, GPU)
    pods, policies = _pods(manifests), _policies(manifests)
    allowed = {
        source
        for source in pods
        if source != "seaweedfs" and can_connect(policies, pods[source], pods["seaweedfs"], 8333)
    }
    assert allowed == {"tracking"}, allowed
    assert not can_connect(policies, pods["seaweedfs"], pods["postgres"], 5432)
    assert not can_connect(policies, pods["seaweedfs"], pods["other-namespace"], 12345)
    assert not can_connect(policies, pods["other-namespace"], pods["seaweedfs"], 12345)


def test_an_unknown_bundled_store_is_refused() -> None:
    assert "bundledStore" in render_error(BUNDLED, set_values=["s3.bundledStore=ceph"])


def test_clients_hold_no_store_credentials() -> None:
    """The artifact proxy as in compose: trainers and the model server talk HTTP to the tracking server."""
    manifests = render(*EVERYTHING)
    tracking = one(manifests, "Service", "tracking")["metadata"]["name"]
    for component in ("trainer", "model-server"):
        kind = "CronJob" if component == "trainer" else "Deployment"
        (container,) = containers(one(manifests, kind, component))
        env = env_of(container)
        assert env["MLFLOW_TRACKING_URI"] == f"http://{tracking}:5000"
        assert not [
            name for name in env if name.startswith(("AWS_", "POSTGRES_", "MINIO_", "MLFLOW_S3", "MLFLOW_BACKEND"))
        ]
        assert not [v for v in env.values() if isinstance(v, dict)], "a client reads no Secret without auth"
        assert env["MLFLOW_DISABLE_TELEMETRY"] == env["DO_NOT_TRACK"] == "true"


def test_model_server_runs_the_compose_serving_command() -> None:
    (server,) = containers(one(render(BUNDLED), "Deployment", "model-server"))
    assert server["command"] == ["mlflow", "models", "serve"]
    assert server["args"] == [
        "--model-uri=models:/mnist@champion",
        "--env-manager=local",
        "--host=0.0.0.0",
        "--port=5001",
    ]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == "/ping"


# --- auth, ingress, allowed hosts -------------------------------------------------------------------------


def test_auth_ingress_tls_and_allowed_hosts() -> None:
    manifests = render(AUTH_INGRESS)
    ingress = one(manifests, "Ingress", "tracking")
    assert ingress["spec"]["tls"] == [{"hosts": ["mlflow.example.com"], "secretName": "mlflow-example-com-tls"}]
    assert ingress["spec"]["rules"][0]["host"] == "mlflow.example.com"
    env = env_of(containers(one(manifests, "Deployment", "tracking"))[0])
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert {"mlflow.example.com", "mlflow.example.com:*", "t-mlflow-stack-tracking:5000"} <= set(allowed)
    # The UI's own POSTs (runs/search) carry the Ingress host as Origin: MLflow's own check must let them through.
    origins = env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"].split(",")
    assert not should_block_cors_request("https://mlflow.example.com", "POST", origins)
    for foreign in ("https://evil.example", "http://mlflow.example.com", "https://mlflow.example.com.evil.example"):
        assert should_block_cors_request(foreign, "POST", origins), foreign
    assert env["MLFLOW_AUTH"] == "basic"
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["secretKeyRef"]["name"] == "mlflow-auth"  # one key for every replica
    model_env = env_of(containers(one(manifests, "Deployment", "model-server"))[0])
    assert model_env["MLFLOW_TRACKING_PASSWORD"]["secretKeyRef"]["name"] == "mlflow-trainer-login"


def test_without_ingress_only_cluster_names_are_allowed_hosts() -> None:
    env = env_of(containers(one(render(BUNDLED), "Deployment", "tracking"))[0])
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert f"t-mlflow-stack-tracking.{NAMESPACE}.svc.cluster.local:5000" in allowed
    assert not [host for host in allowed if "example" in host]
    assert "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS" not in env  # only localhost's POSTs, as MLflow has it
    assert env["MLFLOW_AUTH"] == "none"


def test_an_ingress_without_tls_and_extra_origins_are_allowed_origins() -> None:
    manifests = render(
        AUTH_INGRESS,
        set_values=["ingress.tls.enabled=false", 'trackingServer.extraAllowedOrigins=["https://portal.example.org"]'],
    )
    origins = env_of(containers(one(manifests, "Deployment", "tracking"))[0])["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"]
    for allowed in ("http://mlflow.example.com", "http://mlflow.example.com:8080", "https://portal.example.org"):
        assert not should_block_cors_request(allowed, "POST", origins.split(",")), allowed
    assert should_block_cors_request("https://mlflow.example.com", "POST", origins.split(","))


# The login cache and the fast path's allowance cap: the server's defaults, its bounds, into both containers.
CACHE_KNOBS = {
    "loginCacheSeconds": "MLFLOW_AUTH_CACHE_SECONDS",
    "decisionCacheSeconds": "MLFLOW_AUTH_DECISION_CACHE_SECONDS",
}


def _server_knob(env: str) -> Knob:
    (declared,) = [declared for declared in knobs() if declared.env == env]
    return declared


def test_auth_cache_knobs_default_to_the_servers_defaults() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["auth"]
    for value, env in CACHE_KNOBS.items():
        declared = _server_knob(env)
        assert declared.parse(env, str(defaults[value])) == declared.parse(env, declared.default), value
        for container in containers(one(render(AUTH_INGRESS), "Deployment", "tracking")):
            assert container["env"] and env_of(container)[env] == declared.default, (container["name"], env)


def _auth_values(tmp_path: Path, **auth: float) -> Path:
    """A values file, so numbers stay numbers (`--set` turns 0.5 into a string)."""
    values = tmp_path / "auth-cache-values.yaml"
    values.write_text(yaml.safe_dump({"auth": auth}))
    return values


@pytest.mark.parametrize(("login", "decision"), [(0, 0), (300, 0.5), (86400, 3600)])
def test_auth_cache_knobs_reach_prepare_and_the_server(login: int, decision: float, tmp_path: Path) -> None:
    values = _auth_values(tmp_path, loginCacheSeconds=login, decisionCacheSeconds=decision)
    for container in containers(one(render(AUTH_INGRESS, values), "Deployment", "tracking")):
        env = env_of(container)
        assert env["MLFLOW_AUTH_CACHE_SECONDS"] == str(login), container["name"]
        assert env["MLFLOW_AUTH_DECISION_CACHE_SECONDS"] == str(decision), container["name"]
        # What the chart renders is what the server reads.
        assert _server_knob("MLFLOW_AUTH_CACHE_SECONDS").parse("MLFLOW_AUTH_CACHE_SECONDS", str(login)) == login
        variable = "MLFLOW_AUTH_DECISION_CACHE_SECONDS"
        assert _server_knob(variable).parse(variable, env[variable]) == decision


@pytest.mark.parametrize("decision", [0, 0.5, 3600])
def test_the_decision_cache_cap_reaches_the_oidc_server_too(decision: float, tmp_path: Path) -> None:
    # With oidc the server caps the allowances it remembers for access tokens by this knob (fast_path_oidc.py).
    values = _auth_values(tmp_path, decisionCacheSeconds=decision)
    (server,) = [
        c for c in containers(one(render(OIDC, values), "Deployment", "tracking")) if c["name"] == "tracking-server"
    ]
    variable = "MLFLOW_AUTH_DECISION_CACHE_SECONDS"
    assert _server_knob(variable).parse(variable, env_of(server)[variable]) == decision


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("loginCacheSeconds", -1, "minimum"),
        ("loginCacheSeconds", 1.5, "integer"),
        ("decisionCacheSeconds", -1, "minimum"),
        ("decisionCacheSeconds", 3601, "maximum"),
        ("decisionCacheSeconds", 3600.5, "maximum"),
    ],
)
def test_auth_cache_knobs_out_of_the_servers_range_are_refused(
    name: str, value: float, why: str, tmp_path: Path
) -> None:
    variable = CACHE_KNOBS[name]
    # Values the server itself refuses at start...
    with pytest.raises(SettingsError):
        _server_knob(variable).parse(variable, str(value))
    # ...fail the install, naming the value.
    error = render_error(AUTH_INGRESS, _auth_values(tmp_path, **{name: value}))
    assert f"/auth/{name}" in error and why in error, error


# --- trainer Job --------------------------------------------------------------------------------------------


def test_trainer_job_requests_a_gpu_on_the_chosen_nodes() -> None:
    job = one(render(GPU), "CronJob", "trainer")
    (trainer,) = containers(job)
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = pod_spec(job)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["restartPolicy"] == "Never"
    assert trainer["args"] == ["--epochs", "5"]
    # MNIST from the claim, mounted read-only, named through the trainer's TRAINER_DATA.
    assert env_of(trainer)["TRAINER_DATA"] == "/mnist/mnist.npz"
    claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": "mnist-data", "readOnly": True}]


def test_trainer_job_on_cpu_and_tfds_and_a_sweep() -> None:
    job = one(
        render(
            GPU,
            set_values=["trainer.gpu.count=0", "trainer.data.source=tfds", 'trainer.job.args=["sweep","--epochs","1"]'],
        ),
        "CronJob",
        "trainer",
    )
    (trainer,) = containers(job)
    assert "nvidia.com/gpu" not in trainer["resources"]["limits"]
    assert "TRAINER_DATA" not in env_of(trainer)
    assert trainer["args"] == ["sweep", "--epochs", "1"]


def test_trainer_job_is_not_part_of_an_install_by_default() -> None:
    assert not find(render(BUNDLED), "Job", "trainer")
    assert not find(render(BUNDLED), "CronJob", "trainer")


# --- NetworkPolicies: reachability computed from the selectors -----------------------------------------------


def _pods(manifests: list[dict[str, Any]]) -> dict[str, Pod]:
    namespace_labels = {"kubernetes.io/metadata.name": NAMESPACE}
    pods = {}
    for workload in workloads(manifests):
        template = pod_template(workload)
        ports = {p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", []) if "name" in p}
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        pods[component] = Pod(component, NAMESPACE, template["metadata"]["labels"], namespace_labels, ports)
    pods["other-pod"] = Pod("other-pod", NAMESPACE, {"app": "notebook"}, namespace_labels)
    pods["labelled-client"] = Pod(
        "labelled-client", NAMESPACE, {"app": "notebook", "mlflow-stack/tracking-client": "true"}, namespace_labels
    )
    pods["other-namespace"] = Pod("other-namespace", "team-b", {}, {"kubernetes.io/metadata.name": "team-b"})
    pods["ingress-controller"] = Pod(
        "ingress-controller",
        "ingress-nginx",
        {"app.kubernetes.io/name": "ingress-nginx"},
        {"kubernetes.io/metadata.name": "ingress-nginx"},
    )
    pods["kube-dns"] = Pod(
        "kube-dns", "kube-system", {"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"}
    )
    return pods


def _policies(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    policies = find(manifests, "NetworkPolicy")
    for policy in policies:
        policy["metadata"].setdefault("namespace", NAMESPACE)
    return policies


PORTS = {"tracking": 5000, "postgres": 5432, "minio": 9000, "model-server": 5001}


def test_network_policies_keep_compose_isolation() -> None:
    manifests = render(*EVERYTHING)
    pods, policies = _pods(manifests), _policies(manifests)
    assert {"tracking", "postgres", "minio", "model-server", "trainer"} <= set(pods)

    def reach(source: str, destination: str) -> bool:
        return can_connect(policies, pods[source], pods[destination], PORTS[destination])

    # Only the tracking server (prepare is its init container, in the same pod) reaches the stores.
    for store in ("postgres", "minio"):
        allowed = {source for source in pods if source != store and reach(source, store)}
        assert allowed == {"tracking"}, (store, allowed)
    # Trainers and the model server reach the tracking server, and nothing else of the chart.
    for client in ("trainer", "model-server"):
        reachable = {destination for destination in PORTS if destination != client and reach(client, destination)}
        assert reachable == {"tracking"}, (client, reachable)
    # Who reaches the tracking server: its clients, the Ingress controller, labelled pods; nobody else.
    callers = {source for source in pods if source != "tracking" and reach(source, "tracking")}
    assert callers == {"trainer", "model-server", "labelled-client", "ingress-controller"}, callers
    # The stores call nobody; every pod of the chart may resolve names.
    assert not reach("postgres", "minio") and not reach("minio", "postgres")
    assert not reach("postgres", "tracking")
    for component in ("tracking", "trainer", "model-server"):
        assert can_connect(policies, pods[component], pods["kube-dns"], 53, "UDP"), component
    # The model server answers only pods labelled as its clients.
    assert not reach("other-pod", "model-server") and not reach("trainer", "model-server")


def test_every_chart_pod_is_covered_by_a_policy_in_both_directions() -> None:
    manifests = render(*EVERYTHING)
    pods, policies = _pods(manifests), _policies(manifests)
    outsider = pods["other-namespace"]
    for component in ("tracking", "postgres", "minio", "model-server", "trainer"):
        pod = pods[component]
        # A port nobody listed: denied both ways, which holds only if a policy selects the pod in both directions.
        assert not can_connect(policies, pod, outsider, 12345), component
        assert not can_connect(policies, outsider, pod, 12345), component


def test_trainer_internet_egress_excludes_cluster_ranges() -> None:
    """TFDS needs HTTPS to the internet; the rule must not open the private ranges pods live in."""
    manifests = render(*EVERYTHING, set_values=["trainer.data.source=tfds"])
    policy = next(
        p
        for p in find(manifests, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "trainer"
    )
    blocks = [peer["ipBlock"] for rule in policy["spec"]["egress"] for peer in rule.get("to", []) if "ipBlock" in peer]
    assert blocks == [
        {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]}
    ]
    with_pvc = render(*EVERYTHING)
    policy = next(
        p
        for p in find(with_pvc, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "trainer"
    )
    assert not [peer for rule in policy["spec"]["egress"] for peer in rule.get("to", []) if "ipBlock" in peer]


def test_external_stores_egress_only_from_the_tracking_server() -> None:
    manifests = render(EXTERNAL, set_values=["trainer.job.enabled=true", "modelServer.enabled=true"])
    assert not find(manifests, "StatefulSet")
    by_component = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p
        for p in find(manifests, "NetworkPolicy")
    }
    for component in ("tracking",):
        egress = by_component[component]["spec"]["egress"]
        ports = {port["port"] for rule in egress for port in rule.get("ports", [])}
        assert {5432, 443} <= ports
        assert {"ipBlock": {"cidr": "10.20.0.0/24"}} in [peer for rule in egress for peer in rule.get("to", [])]
    for component in ("trainer", "model-server"):
        ports = {port["port"] for rule in by_component[component]["spec"]["egress"] for port in rule.get("ports", [])}
        assert 5432 not in ports


def test_bundled_postgres_must_fit_every_replicas_connections() -> None:
    # 3 replicas + 1 surge pod x 2 workers x 3 x 8 threads + 5 = 197 fits the default 200; 4 replicas do not.
    assert one(render(BUNDLED, set_values=["trackingServer.replicas=3"]), "Deployment", "tracking")
    error = render_error(BUNDLED, set_values=["trackingServer.replicas=4"])
    assert "postgresql.maxConnections=200 is too small" in error and "need 245" in error
    assert one(
        render(BUNDLED, set_values=["trackingServer.replicas=4", "postgresql.maxConnections=300"]),
        "StatefulSet",
        "postgres",
    )
    # The HPA's ceiling counts, not the initial replica count.
    assert "is too small" in render_error(
        BUNDLED, set_values=["trackingServer.hpa.enabled=true", "trackingServer.hpa.maxReplicas=6"]
    )
    postgres = containers(
        one(render(BUNDLED, set_values=["postgresql.maxConnections=300"]), "StatefulSet", "postgres")
    )[0]
    assert postgres["args"] == ["postgres", "-c", "max_connections=300"]
