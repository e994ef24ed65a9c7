"""Live proof of what the chart's pods do, on this machine's Docker (route (a) of issue 9, item 4).

The chart is rendered with its bundled-evaluation values and 3 tracking-server replicas; every pod's container
is then run as the manifest gives it (tests/chart_live/pods.py), in the order `helm install --wait` applies
the objects (tests/chart/install_order.py; Flux runs the same Helm action, and Argo CD's sync order is the same
single batch, checked here): the tracking Deployment before the Postgres and MinIO StatefulSets, so each
replica's prepare init container starts before the database exists and must wait for it. Shown here:
- every replica's prepare init container exits 0 (three of them at once, queued on the advisory lock), then
  3 replicas pass their startup and readiness probes (the real API call) within Helm's 5-minute wait;
- a trainer pod from the suspended CronJob's template (what `kubectl create job --from=cronjob/...` starts;
  CPU, 2 small epochs on 6000 images) logs and registers a version through the Service name;
- killing, mid-run, the replica the trainer is connected to loses no epoch (MLflow's client retries land on
  another replica), and a replacement replica becomes ready;
- the model-server pod serves models:/mnist@champion and answers /invocations.
Needs the two images built (scripts/test.sh builds them) and MNIST_NPZ. About 3-5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.chart.install_order import argo_plan, flux_plan, helm_plan, unmet_dependencies
from tests.chart_live.pods import PREFIX, TRACKING_SERVER_IMAGE, Pods, docker, pod_template, split_image, tracking_pods
from tests.support.waiting import wait_until

TRAINER_IMAGE = os.environ.get("TRAINER_IMAGE", "mlflow-stack/trainer:0.1.0")
REPLICAS = 3
EPOCHS = 2
EXPERIMENT = f"chart-live-{uuid.uuid4().hex[:8]}"
MODEL = "mnist"  # the model server's default URI is models:/mnist@champion


@pytest.fixture(scope="module")
def mnist() -> Path:
    path = os.environ.get("MNIST_NPZ")
    if not path or not Path(path).is_file():
        pytest.fail("MNIST_NPZ must name a Keras-format mnist.npz (../shared/ci/offline-docker.sh writes one)")
    return Path(path)


@pytest.fixture(scope="module")
def pods(mnist: Path) -> Iterator[Pods]:
    trainer_repo, trainer_tag = split_image(TRAINER_IMAGE)
    job_args = ["--epochs", str(EPOCHS), "--max-train-samples", "6000", "--min-accuracy", "0.5",
                "--experiment-name", EXPERIMENT]  # fmt: skip
    harness = tracking_pods(
        "bundled-evaluation",
        set_values=[
            f"images.trainer.repository={trainer_repo}",
            f"images.trainer.tag={trainer_tag}",
            f"trackingServer.replicas={REPLICAS}",
            "trainer.job.enabled=true",
            "trainer.gpu.count=0",
            "trainer.data.source=pvc",
            "trainer.data.existingClaim=mnist",
            f"trainer.data.npzPath={mnist.name}",
            # This machine has 2 cores: Docker refuses a CPU limit above that.
            "trainer.resources.requests.cpu=1",
            "trainer.resources.limits.cpu=2",
            "trainer.job.args=" + json.dumps(job_args),
        ],
        claims={"mnist": mnist.parent},
    )
    try:
        yield harness
    finally:
        if os.environ.get("KEEP_CHART_PODS") != "1":
            harness.remove_all()


def container(pods: Pods, kind: str, component: str) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(pods.workload(kind, component))["spec"]["containers"][0]
    return spec


def service(pods: Pods, component: str) -> str:
    (name,) = [
        m["metadata"]["name"]
        for m in pods.manifests
        if m["kind"] == "Service" and m["spec"]["selector"]["app.kubernetes.io/component"] == component
    ]
    return name


class Api:
    """REST calls from the host straight to one replica, with the Service's name as Host header (allowed)."""

    def __init__(self, pods: Pods, replica: str, host: str) -> None:
        self.base = f"http://{pods.ip(replica)}:5000/api/2.0/mlflow"
        self.headers = {"Host": f"{host}:5000"}

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        response = requests.get(self.base + path, params=params, headers=self.headers, timeout=20)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        body: dict[str, Any] = response.json()
        return body

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(self.base + path, json=body, headers=self.headers, timeout=20)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        answer: dict[str, Any] = response.json()
        return answer


HELM_WAIT_SECONDS = 300  # `helm install --wait`'s default timeout; Flux's helm-controller uses the same


@pytest.fixture(scope="module")
def replicas(pods: Pods) -> list[str]:
    """Install as `helm install --wait` does: every object of the one batch in Helm's kind order, then wait."""
    plan = helm_plan(pods.manifests)
    assert unmet_dependencies(plan) == [] and len(plan) == 1
    order = [(m["kind"], m["metadata"]["name"]) for m in plan[0].objects]
    # Flux runs Helm's action; Argo CD applies the same objects in one wave (its kind order is Helm's here).
    for other in (flux_plan(pods.manifests), argo_plan(pods.manifests)):
        assert len(other) == 1 and sorted(order) == sorted((m["kind"], m["metadata"]["name"]) for m in other[0].objects)
    kinds = [kind for kind, _ in order]
    assert kinds.index("Deployment") < kinds.index("StatefulSet"), "the servers start before their database"
    started_at = time.monotonic()
    names: list[str] = []
    for manifest in plan[0].objects:
        if (
            manifest["kind"] == "Deployment"
            and manifest["metadata"]["labels"]["app.kubernetes.io/component"] == "tracking"
        ):
            names = [pods.run(manifest, index) for index in range(manifest["spec"]["replicas"])]
        elif manifest["kind"] == "StatefulSet":
            pods.run(manifest)
    assert len(names) == REPLICAS
    server = container(pods, "Deployment", "tracking")
    for name in names:
        pods.wait_ready(name, server, timeout=HELM_WAIT_SECONDS - (time.monotonic() - started_at))
    print(f"helm --wait order: every replica ready {time.monotonic() - started_at:.0f} s after the apply")
    for name in names:
        # Each replica ran prepare to the end (it may have failed and been restarted while Postgres came up).
        assert pods.init_attempts[name][-1] == 0, pods.init_logs(name)
    return names


def test_prepare_runs_then_three_replicas_serve(pods: Pods, replicas: list[str]) -> None:
    assert len(replicas) == REPLICAS
    host = service(pods, "tracking")
    # The Service name resolves to every replica, inside the network, as a pod would look it up.
    lookup = docker(
        "run", "--rm", "--network", pods.network, "--entrypoint", "python", TRACKING_SERVER_IMAGE, "-c",
        f"import json, socket; print(json.dumps(sorted({{a[4][0] for a in socket.getaddrinfo('{host}', 5000)}})))",
    ).stdout  # fmt: skip
    assert json.loads(lookup) == sorted(pods.ip(name) for name in replicas)
    for name in replicas:
        assert Api(pods, name, host).get("/experiments/search", max_results=1)["experiments"]
        assert docker("inspect", "--format", "{{.Config.User}}", name).stdout.strip() == "10001:10001"
    # Liveness too, as the kubelet would run it.
    server = container(pods, "Deployment", "tracking")
    assert all(pods.probe(name, server, "livenessProbe") for name in replicas)


def established_server_ips(pods: Pods, trainer: str) -> set[str]:
    """Remote IPs of the trainer's open TCP connections to port 5000, read from its /proc/net/tcp."""
    script = (
        "import socket,struct\n"
        "for line in open('/proc/net/tcp').read().splitlines()[1:]:\n"
        "    f=line.split(); ip,port=f[2].split(':')\n"
        "    if int(port,16)==5000 and f[3]=='01': print(socket.inet_ntoa(struct.pack('<I',int(ip,16))))\n"
    )
    result = docker("exec", trainer, "python", "-c", script, check=False)
    return set(result.stdout.split())


def test_trainer_registers_through_the_service_and_a_killed_replica_loses_no_epoch(
    pods: Pods, replicas: list[str]
) -> None:
    host = service(pods, "tracking")
    # `kubectl create job --from=cronjob/<release>-mlflow-stack-trainer`: a Job with the CronJob's template.
    trainer = pods.run(pods.workload("CronJob", "trainer"))
    by_ip = {pods.ip(name): name for name in replicas}

    # Wait until the run exists and the trainer holds a connection to a replica, then SIGKILL that replica.
    def connected_replica() -> str | None:
        state = docker("inspect", "--format", "{{.State.Running}}", trainer).stdout.strip()
        assert state == "true", f"trainer ended before a replica could be killed:\n{pods.logs(trainer)}"
        survivor = next(name for name in replicas)
        runs = (
            Api(pods, survivor, host)
            .post("/runs/search", {"experiment_ids": _experiment_ids(pods, replicas[0], host), "max_results": 5})
            .get("runs", [])
        )
        if any(run["info"]["status"] == "RUNNING" for run in runs):
            connected = established_server_ips(pods, trainer) & set(by_ip)
            if connected:
                return by_ip[sorted(connected)[0]]
        return None

    victim = wait_until(
        connected_replica, 240, "the trainer never held a connection to a replica while its run was RUNNING", 0.3
    )
    docker("kill", victim)
    print(f"killed {victim} while the trainer was connected to it")
    killed_at = time.monotonic()
    # The ReplicaSet replaces the pod: a new container from the same spec.
    docker("rm", "-f", victim)
    deployment = pods.workload("Deployment", "tracking")
    replacement = pods.run(deployment, replicas.index(victim), suffix="-replacement")
    exit_code = pods.wait_exit(trainer, timeout=600)
    logs = pods.logs(trainer)
    assert exit_code == 0, f"trainer exited {exit_code}:\n{logs}"
    pods.wait_ready(replacement, container(pods, "Deployment", "tracking"), timeout=300)
    alive = [name for name in replicas if name != victim] + [replacement]
    api = Api(pods, alive[0], host)
    (run,) = api.post("/runs/search", {"experiment_ids": _experiment_ids(pods, alive[0], host)})["runs"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["end_time"] / 1000 > time.time() - (time.monotonic() - killed_at)  # ended after the kill
    history = api.get("/metrics/get-history", run_id=run["info"]["run_id"], metric_key="val_accuracy")["metrics"]
    assert sorted(point["step"] for point in history) == list(range(1, EPOCHS + 1)), history
    assert run["info"]["run_id"] in {
        v["run_id"] for v in api.get("/model-versions/search", filter=f"name='{MODEL}'")["model_versions"]
    }
    assert "registered" in logs


def _experiment_ids(pods: Pods, replica: str, host: str) -> list[str]:
    response = requests.get(
        f"http://{pods.ip(replica)}:5000/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": EXPERIMENT},
        headers={"Host": f"{host}:5000"},
        timeout=20,
    )
    return [response.json()["experiment"]["experiment_id"]] if response.status_code == 200 else []


def test_model_server_answers_invocations(pods: Pods, replicas: list[str], mnist: Path) -> None:
    live = [
        name for name in docker("ps", "--format", "{{.Names}}").stdout.split() if name.startswith(f"{PREFIX}-tracking-")
    ]
    api = Api(pods, live[0], service(pods, "tracking"))
    assert api.get("/registered-models/alias", name=MODEL, alias="champion")["model_version"]["version"]
    server = pods.run(pods.workload("Deployment", "model-server"))
    pods.wait_ready(server, container(pods, "Deployment", "model-server"), timeout=300)
    with np.load(mnist) as archive:
        images, labels = archive["x_test"][:100], archive["y_test"][:100]
    body = {"inputs": ((images.astype(np.float32) / 255.0)[..., np.newaxis]).tolist()}
    response = requests.post(f"http://{pods.ip(server)}:5001/invocations", json=body, timeout=60)
    assert response.status_code == 200, response.text[:500]
    predictions = np.asarray(response.json()["predictions"])
    assert predictions.shape == (100, 10)
    # 2 epochs on 6000 images: far above chance (10 %), the point is that the champion is served.
    assert float((predictions.argmax(axis=1) == labels).mean()) >= 0.7


def test_only_prefixed_objects_were_created(pods: Pods) -> None:
    names = docker("ps", "-a", "--format", "{{.Names}}", "--filter", f"network={pods.network}").stdout.split()
    assert names and all(name.startswith(PREFIX + "-") for name in names)
    assert subprocess.run(["docker", "network", "inspect", pods.network], capture_output=True).returncode == 0
