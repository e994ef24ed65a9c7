"""Run the chart's rendered pods with Docker, container by container, exactly as the manifests give them.

What a kubelet would take from a pod spec is translated one to one: image, command (entrypoint) and args,
env (literal or from a Secret given here), container ports, the pod's and container's securityContext
(user and group, fsGroup on volumes, read-only root filesystem, dropped capabilities, no new privileges),
emptyDir volumes (empty 0777 host folders), claims (named volumes, or a host folder for an existing claim), CPU and memory
limits, and restartPolicy. Init containers run first, one after the other, each restarted until it exits 0
(restartPolicy Always), in a thread of their own, so pods start in any order without blocking the harness.
A Service whose port is its target port becomes a network alias on every container its selector matches, so
`http://<service>:<port>` resolves to all ready and unready replicas (Docker's DNS round-robin); one on another
port (80 -> 5000) is a small TCP forwarder container named like the Service, standing in for kube-proxy.
Secret volumes are folders of the Secrets given here. Probes are run by `Pods.probe`, from the host, the way the
kubelet runs them: exec inside the container, httpGet against the container's IP.

What this cannot show: NetworkPolicies (no enforcing CNI; their effect is computed in tests/chart),
scheduling (nodeSelector, tolerations, GPUs), and Helm, Flux and Argo CD themselves (the order they apply objects
in is computed by tests/chart/install_order.py and followed by the tests).
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chart.chart import ci_values, render
from tests.support.waiting import wait_until

Manifest = dict[str, Any]
# Every container, network, volume and folder the harness makes is named with this prefix, and only those are
# ever removed (a shared Docker engine can run several checkouts side by side with different prefixes).
PREFIX = os.environ.get("CHART_PODS_PREFIX", "chart-pods")
TRACKING_SERVER_IMAGE = os.environ.get("TRACKING_SERVER_IMAGE", "mlflow-stack/tracking-server:3.17.2")


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} ... exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def cpu_limit(value: str | int | float) -> str:
    text = str(value)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


def memory_limit(value: str) -> str:
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(value))
    assert match, value
    return match.group(1) + units.get(match.group(2) or "", "")


@dataclass
class Pods:
    """One Docker network standing in for a namespace; the rendered objects; the Secrets' contents."""

    manifests: list[Manifest]
    secrets: dict[str, dict[str, str]]
    claims: dict[str, Path] = field(default_factory=dict)  # existing claim name -> host folder
    network: str = PREFIX
    started: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    scratch: Path = Path(tempfile.gettempdir()) / PREFIX  # emptyDir folders
    # Pod name -> exit codes of its init containers' attempts, in order (read by tests).
    init_attempts: dict[str, list[int]] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    # --- objects --------------------------------------------------------------------------------------------
    def workload(self, kind: str, component: str) -> Manifest:
        (found,) = [
            m
            for m in self.manifests
            if m["kind"] == kind and m["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ]
        return found

    def service_names(self, pod_labels: dict[str, str]) -> list[str]:
        """Network aliases of a pod: each selecting Service's name, or its endpoints' name behind a forwarder."""
        return [
            m["metadata"]["name"] if not self.forwarded(m) else endpoints_alias(m)
            for m in self.manifests
            if m["kind"] == "Service"
            and "selector" in m["spec"]
            and selector_matches(m["spec"]["selector"], pod_labels)
        ]

    def forwarded(self, service: Manifest) -> bool:
        """A Service whose port differs from the container port it targets needs a forwarder."""
        return any(port["port"] != self.target_port(service, port) for port in service["spec"]["ports"])

    def target_port(self, service: Manifest, port: dict[str, Any]) -> int:
        target = port.get("targetPort", port["port"])
        if isinstance(target, int):
            return target
        for manifest in self.manifests:
            if manifest["kind"] not in ("Deployment", "StatefulSet"):
                continue
            template = manifest["spec"]["template"]
            if selector_matches(service["spec"].get("selector", {}), template["metadata"]["labels"]):
                for container in template["spec"]["containers"]:
                    for declared in container.get("ports", []):
                        if declared.get("name") == target:
                            return int(declared["containerPort"])
        raise AssertionError(f"no container port named {target} behind {service['metadata']['name']}")

    def start_forwarders(self, image: str) -> list[str]:
        """kube-proxy's part for Services on another port: a TCP forwarder per such Service, named like it."""
        names = []
        for service in (m for m in self.manifests if m["kind"] == "Service" and "selector" in m["spec"]):
            if not self.forwarded(service):
                continue
            (port,) = service["spec"]["ports"]
            name = f"{PREFIX}-svc-{service['metadata']['name']}"
            docker(
                "run", "-d", "--name", name, "--network", self.network,
                "--network-alias", service["metadata"]["name"], "--entrypoint", "python", image, "-c",
                FORWARDER, str(port["port"]), endpoints_alias(service), str(self.target_port(service, port)),
            )  # fmt: skip
            self.started.append(name)
            names.append(name)
        return names

    # --- translation ------------------------------------------------------------------------------------------
    def _env(self, container: dict[str, Any]) -> list[str]:
        args = []
        for item in container.get("env", []):
            if "value" in item:
                value = str(item["value"])
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                value = self.secrets[ref["name"]][ref["key"]]
            args += ["-e", f"{item['name']}={value}"]
        return args

    def _volume(self, pod_name: str, volume: dict[str, Any], fs_group: int | None, claim_prefix: str) -> str:
        """A docker --mount source for a pod volume (emptyDir is handled as tmpfs by the caller)."""
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            return str(self.claims[claim])
        name = f"{PREFIX}-{claim_prefix}-{volume['name']}-{pod_name}"
        docker("volume", "create", name)
        self.volumes.append(name)
        if fs_group is not None:
            # What the kubelet does for fsGroup: the volume's group becomes fsGroup, group-writable, setgid.
            docker("run", "--rm", "-v", f"{name}:/v", "--entrypoint", "sh", "--user", "0",
                   "python:3.11-slim-bookworm", "-c", f"chgrp -R {fs_group} /v && chmod -R g+rwXs /v")  # fmt: skip
        return name

    def run(self, workload: Manifest, index: int = 0, restart: bool | None = None, suffix: str = "") -> str:
        """Start pod `index` of a workload; its main container's name, returned at once.

        Without init containers the main container is started before this returns; with them, a thread runs
        each init container until it exits 0 (as the kubelet does), then starts the main container.
        """
        template = pod_template(workload)
        labels = template["metadata"]["labels"]
        component = labels["app.kubernetes.io/component"]
        name = f"{PREFIX}-{component}-{index}{suffix}"
        init = template["spec"].get("initContainers", [])
        if not init:
            return self._run_container(workload, template["spec"]["containers"][0], name, name, restart)
        self.init_attempts[name] = []

        def start_pod() -> None:
            for number, container in enumerate(init):
                while True:
                    attempt = f"{name}-init{number}-{len(self.init_attempts[name])}"
                    # Not reachable through the Services: a pod is not ready while it initialises.
                    self._run_container(workload, container, attempt, name, False, service_aliases=False)
                    code = self.wait_exit(attempt, timeout=900)
                    self.init_attempts[name].append(code)
                    if code == 0:
                        break
                    time.sleep(min(10 * len(self.init_attempts[name]), 40))  # the kubelet's back-off, shorter
            self._run_container(workload, template["spec"]["containers"][0], name, name, restart)

        thread = threading.Thread(target=start_pod, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        return name

    def init_logs(self, name: str) -> str:
        attempts = [c for c in self.started if c.startswith(f"{name}-init")]
        return "\n".join(f"--- {attempt}\n{self.logs(attempt)}" for attempt in attempts)

    def _run_container(
        self,
        workload: Manifest,
        container: dict[str, Any],
        name: str,
        pod_name: str,
        restart: bool | None,
        service_aliases: bool = True,
    ) -> str:
        template = pod_template(workload)
        labels = template["metadata"]["labels"]
        pod = template["spec"]
        component = labels["app.kubernetes.io/component"]
        pod_security = pod.get("securityContext", {})
        security = {**pod_security, **container.get("securityContext", {})}
        args = ["run", "-d", "--name", name, "--hostname", name, "--network", self.network]
        for alias in self.service_names(labels) if service_aliases else []:
            args += ["--network-alias", alias]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        if "runAsUser" in security:
            args += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"]
        fs_group = pod_security.get("fsGroup")
        if fs_group is not None:
            args += ["--group-add", str(fs_group)]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for capability in security.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", capability]
        limits = container.get("resources", {}).get("limits", {})
        if "cpu" in limits:
            args += ["--cpus", cpu_limit(limits["cpu"])]
        if "memory" in limits:
            args += ["--memory", memory_limit(limits["memory"])]
        restart_policy = pod.get("restartPolicy", "Always")
        if restart if restart is not None else restart_policy == "Always":
            args += ["--restart", "always"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for claim in workload["spec"].get("volumeClaimTemplates", []):
            volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"], "claimTemplate": True}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            read_only = ",readonly" if mount.get("readOnly") else ""
            if "emptyDir" in volume:
                # An emptyDir is a fresh, world-writable (0777) host folder of the pod. Not a Docker tmpfs or
                # volume: those copy the image folder's owner and mode, which a kubelet does not.
                folder = self.scratch / pod_name / mount["name"]
                folder.mkdir(parents=True, exist_ok=True)
                folder.chmod(0o777)
                args += ["--mount", f"type=bind,source={folder},destination={mount['mountPath']}"]
            elif "secret" in volume:
                folder = self.scratch / pod_name / mount["name"]
                folder.mkdir(parents=True, exist_ok=True)
                for key, value in self.secrets[volume["secret"]["secretName"]].items():
                    (folder / key).write_text(value)
                    (folder / key).chmod(0o644)
                folder.chmod(0o755)
                args += ["--mount", f"type=bind,source={folder},destination={mount['mountPath']},readonly"]
            elif "persistentVolumeClaim" in volume:
                source = self._volume(name, volume, fs_group, component)
                args += ["--mount", f"type=bind,source={source},destination={mount['mountPath']}{read_only}"]
            else:
                source = self._volume(name, volume, fs_group, component)
                args += ["--mount", f"type=volume,source={source},destination={mount['mountPath']}{read_only}"]
        args += self._env(container)
        for port in container.get("ports", []):
            args += ["--expose", str(port["containerPort"])]
        command = container.get("command")
        if command:
            args += ["--entrypoint", command[0]]
        args.append(container["image"])
        args += [*(command[1:] if command else []), *[str(a) for a in container.get("args", [])]]
        docker(*args)
        self.started.append(name)
        return name

    # --- probes, as the kubelet runs them ------------------------------------------------------------------
    def ip(self, name: str) -> str:
        networks = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", name).stdout)
        address: str = networks[self.network]["IPAddress"]
        return address

    def probe(self, name: str, container: dict[str, Any], kind: str) -> bool:
        spec = container[kind]
        timeout = float(spec.get("timeoutSeconds", 1))
        if "exec" in spec:
            try:
                result = docker("exec", name, *spec["exec"]["command"], check=False, timeout=timeout + 5)
            except subprocess.TimeoutExpired:
                return False
            return result.returncode == 0
        get = spec["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
        try:
            address = self.ip(name)
            if not address:
                return False
            with urllib.request.urlopen(f"http://{address}:{port}{get['path']}", timeout=timeout) as response:
                return 200 <= response.status < 400
        except Exception:
            return False

    def wait_ready(self, name: str, container: dict[str, Any], timeout: float) -> float:
        """Seconds until the startup probe, then the readiness probe, pass; AssertionError on timeout."""
        started = time.monotonic()
        for kind in ("startupProbe", "readinessProbe"):
            if kind in container:
                wait_until(
                    functools.partial(self.probe, name, container, kind),
                    max(0.0, timeout - (time.monotonic() - started)),
                    functools.partial(self._not_passing, name, kind, timeout),
                    interval=float(container[kind].get("periodSeconds", 10)) / 5,
                )
        return time.monotonic() - started

    def _not_passing(self, name: str, kind: str, timeout: float) -> str:
        return f"{name}: {kind} not passing after {timeout:.0f} s:\n{self.logs(name)}"

    def wait_exit(self, name: str, timeout: float) -> int:
        result = docker("wait", name, timeout=timeout)
        return int(result.stdout.strip())

    def logs(self, name: str) -> str:
        result = docker("logs", "--tail", "60", name, check=False)
        return result.stdout + result.stderr

    def restarts(self, name: str) -> int:
        return int(docker("inspect", "--format", "{{.RestartCount}}", name).stdout.strip())

    # --- lifecycle ------------------------------------------------------------------------------------------
    def create_network(self) -> None:
        self.remove_all()
        docker("network", "create", "--label", f"{PREFIX}=1", self.network)

    def remove_all(self) -> None:
        """Everything this harness creates carries the wt-helm-k8s prefix; nothing else is touched."""
        names = docker("ps", "-aq", "--filter", f"name=^{PREFIX}-").stdout.split()
        if names:
            docker("rm", "-f", *names, check=False)
        vols = docker("volume", "ls", "-q", "--filter", f"name=^{PREFIX}-").stdout.split()
        if vols:
            docker("volume", "rm", "-f", *vols, check=False)
        docker("network", "rm", self.network, check=False)
        shutil.rmtree(self.scratch, ignore_errors=True)


def pod_template(workload: Manifest) -> dict[str, Any]:
    """A workload's pod template (a CronJob's, as `kubectl create job --from=cronjob/...` copies it)."""
    spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    template: dict[str, Any] = spec["template"]
    return template


def endpoints_alias(service: Manifest) -> str:
    return f"{service['metadata']['name']}-endpoints"


# argv: listen port, backend name (resolved per connection: Docker's DNS round-robin over the pods), port.
FORWARDER = """
import asyncio, sys
listen, backend, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection(backend, port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", listen)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def split_image(image: str) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":")
    return repository, tag


def postgres_uid() -> int:
    """The chart's postgresql.uid must exist in the image (initdb looks the user up); ask the image."""
    return int(docker("run", "--rm", "--entrypoint", "id", "postgres:16-bookworm", "-u", "postgres").stdout)


def tracking_pods(
    values: str,
    set_values: Sequence[str] = (),
    extra_secrets: Mapping[str, dict[str, str]] | None = None,
    claims: dict[str, Path] | None = None,
) -> Pods:
    """The chart rendered with ci/<values>-values.yaml for the tracking-server image under test and this machine's
    Postgres uid, plus `set_values`; with the Secrets a user creates before installing (no default password exists
    in the chart), random, and `extra_secrets`. Its network is created; nothing runs yet."""
    repository, tag = split_image(TRACKING_SERVER_IMAGE)
    manifests = render(
        ci_values(values),
        set_values=[
            f"images.trackingServer.repository={repository}",
            f"images.trackingServer.tag={tag}",
            f"postgresql.uid={postgres_uid()}",
            *set_values,
        ],
    )
    secret_values = {
        "mlflow-postgres": {"password": secrets.token_hex(16)},
        "mlflow-s3": {
            "AWS_ACCESS_KEY_ID": "mlflow" + secrets.token_hex(4),
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
        },
        **(extra_secrets or {}),
    }
    pods = Pods(manifests, secret_values, claims=claims or {})
    pods.create_network()
    return pods


@dataclass(frozen=True)
class Installed:
    postgres: str  # container names
    replicas: list[str]


def install(pods: Pods) -> Installed:
    """Start the bundled Postgres and MinIO and the tracking replicas, each replica's prepare init container
    first (it waits for the database); returns once every replica passes its startup and readiness probes,
    its prepare having exited 0."""
    postgres = pods.run(pods.workload("StatefulSet", "postgres"))
    pods.run(pods.workload("StatefulSet", "minio"))
    deployment = pods.workload("Deployment", "tracking")
    names = [pods.run(deployment, index) for index in range(deployment["spec"]["replicas"])]
    server: dict[str, Any] = pod_template(deployment)["spec"]["containers"][0]
    for name in names:
        pods.wait_ready(name, server, timeout=300)
        assert pods.init_attempts[name][-1] == 0, pods.init_logs(name)
    return Installed(postgres, names)
