"""auth.mode=oidc in the chart (issue 19, item 5): what `helm template` renders, and what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import (
    AUTH_INGRESS,
    BUNDLED,
    OIDC,
    assert_valid_for_kubernetes,
    containers,
    env_of,
    find,
    one,
    pod_spec,
    render,
    render_error,
    render_text,
    workloads,
)
from tests.chart.netpol import Pod, can_connect

# oidc on the evaluation values: no Ingress, so the redirect URI is given.
OIDC_ON_BUNDLED = [
    "auth.mode=oidc",
    "auth.existingSecret=mlflow-session",
    "auth.clientSecret=mlflow-trainer-token",
    "auth.oidc.issuer=https://sso.example.com",
    "auth.oidc.clientId=mlflow",
    "auth.oidc.existingSecret=mlflow-oidc-client",
    "auth.oidc.redirectUri=http://localhost:5000/callback",
]
# Every name the server reads with oidc (OIDC-INTERFACE.md), as rendered from ci/oidc-values.yaml.
EXPECTED_OIDC_ENV: dict[str, Any] = {
    "MLFLOW_AUTH": "oidc",
    "MLFLOW_OIDC_ISSUER": "https://sso.example.com/realms/ml",
    "MLFLOW_OIDC_CLIENT_ID": "mlflow",
    "MLFLOW_OIDC_CLIENT_SECRET": {"secretKeyRef": {"name": "mlflow-oidc-client", "key": "client-secret"}},
    "MLFLOW_OIDC_REDIRECT_URI": "https://mlflow.example.com/callback",
    "MLFLOW_OIDC_GROUPS_CLAIM": "groups",
    "MLFLOW_OIDC_ADMIN_GROUP": "ml-platform-admins",
    "MLFLOW_OIDC_USER_GROUPS": "ml-team,ml-platform-admins",
    "MLFLOW_OIDC_SCOPES": "openid email profile groups",
    "MLFLOW_OIDC_USERNAME_CLAIM": "email",
    "MLFLOW_OIDC_CA_FILE": "/run/oidc/ca.crt",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": {"secretKeyRef": {"name": "mlflow-session", "key": "flask-secret-key"}},
}
BASIC_ONLY = {
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_AUTH_DATABASE_URI",
    "MLFLOW_AUTH_CLIENT_USERNAME",
    "MLFLOW_AUTH_CLIENT_PASSWORD",
}


def tracking_containers(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """prepare and tracking-server by name."""
    return {c["name"]: c for c in containers(one(manifests, "Deployment", "tracking"))}


# --- each mode renders ---------------------------------------------------------------------------------------


def test_oidc_values_render_the_interface_env_into_prepare_and_the_server() -> None:
    pods = tracking_containers(render(OIDC))
    assert set(pods) == {"prepare", "tracking-server"}
    for name, container in pods.items():
        env = env_of(container)
        assert {k: env.get(k) for k in EXPECTED_OIDC_ENV} == EXPECTED_OIDC_ENV, name
        assert not BASIC_ONLY & set(env), (name, BASIC_ONLY & set(env))


@pytest.mark.parametrize(
    ("set_values", "mode"),
    [
        ([], "none"),
        (["auth.mode=none"], "none"),
        (["auth.mode=basic", "auth.existingSecret=a", "auth.clientSecret=c"], "basic"),
        (["auth.enabled=true", "auth.existingSecret=a", "auth.clientSecret=c"], "basic"),
        (["auth.enabled=true", "auth.mode=basic", "auth.existingSecret=a", "auth.clientSecret=c"], "basic"),
        (OIDC_ON_BUNDLED, "oidc"),
    ],
    ids=["default", "none", "basic", "enabled", "enabled-and-basic", "oidc"],
)
def test_each_mode_renders_its_server_settings(set_values: list[str], mode: str) -> None:
    for container in tracking_containers(render(BUNDLED, set_values=set_values)).values():
        env = env_of(container)
        assert env["MLFLOW_AUTH"] == mode
        assert ("MLFLOW_OIDC_ISSUER" in env) == (mode == "oidc")
        assert ("MLFLOW_AUTH_ADMIN_PASSWORD" in env) == (mode == "basic")
        assert ("MLFLOW_FLASK_SERVER_SECRET_KEY" in env) == (mode != "none")


def test_auth_enabled_and_mode_basic_render_the_same_release() -> None:
    """Existing users keep auth.enabled=true; the new spelling changes nothing in what is applied."""
    assert render_text(AUTH_INGRESS) == render_text(AUTH_INGRESS, set_values=["auth.enabled=false", "auth.mode=basic"])


def test_oidc_clients_use_the_service_accounts_token_and_prepare_creates_no_user() -> None:
    manifests = render(OIDC, set_values=["trainer.job.enabled=true"])
    token = {"name": "mlflow-trainer-token"}
    for kind, component in (("CronJob", "trainer"), ("Deployment", "model-server")):
        (container,) = containers(one(manifests, kind, component))
        env = env_of(container)
        assert env["MLFLOW_TRACKING_USERNAME"] == {"secretKeyRef": {**token, "key": "username"}}
        assert env["MLFLOW_TRACKING_PASSWORD"] == {"secretKeyRef": {**token, "key": "password"}}
        assert not [name for name in env if name.startswith("MLFLOW_OIDC_")], "clients never see the client secret"
    # The token is issued by an admin (mlflow-stack-token), so nobody in the release reads it but the clients.
    assert "mlflow-trainer-token" not in str(one(manifests, "Deployment", "tracking"))


def test_oidc_clients_without_a_token_secret_fail_naming_it() -> None:
    error = render_error(OIDC, set_values=["auth.clientSecret="])
    assert "auth.clientSecret is required with auth.mode=oidc" in error
    assert "mlflow-stack-token" in error
    # Without trainers or a model server nothing needs it.
    assert one(render(OIDC, set_values=["auth.clientSecret=", "modelServer.enabled=false"]), "Deployment", "tracking")


def test_oidc_needs_the_session_key_secret() -> None:
    error = render_error(OIDC, set_values=["auth.existingSecret="])
    assert "auth.existingSecret is required with auth.mode=oidc" in error and "flask-secret-key" in error


@pytest.mark.parametrize("kubernetes", ["1.30.0", "1.35.0"])
def test_oidc_with_every_optional_object_validates(kubernetes: str, tmp_path: Path) -> None:
    """The CA volume in gc's CronJob and the trainer's token next to an HPA and a ServiceMonitor."""
    text = render_text(
        OIDC,
        set_values=[
            "gc.enabled=true",
            "trainer.job.enabled=true",
            "trackingServer.hpa.enabled=true",
            "postgresql.maxConnections=500",
            "metrics.serviceMonitor.enabled=true",
            "auth.oidc.networkPolicyPorts=[443,8443]",
        ],
    )
    kinds = {doc["kind"] for doc in yaml.safe_load_all(text) if doc}
    assert {"CronJob", "HorizontalPodAutoscaler", "NetworkPolicy", "Ingress"} <= kinds
    assert_valid_for_kubernetes(text, kubernetes, tmp_path)


# --- the client secret: from a Secret, never from values ----------------------------------------------------


def test_the_client_secret_comes_from_a_secret_key_ref_with_the_chosen_key() -> None:
    manifests = render(OIDC, set_values=["auth.oidc.existingSecret=idp-client", "auth.oidc.existingSecretKey=secret"])
    assert not find(manifests, "Secret")
    for container in tracking_containers(manifests).values():
        assert env_of(container)["MLFLOW_OIDC_CLIENT_SECRET"] == {
            "secretKeyRef": {"name": "idp-client", "key": "secret"}
        }


def test_no_value_can_carry_the_client_secret() -> None:
    for key in ("auth.oidc.clientSecret", "auth.oidc.clientSecretValue", "auth.oidc.secret"):
        assert "additional properties" in render_error(OIDC, set_values=[f"{key}=hunter2"]), key
    # And no oidc variable of any container holds a literal secret.
    for workload in workloads(render(OIDC, set_values=["gc.enabled=true"])):
        for container in containers(workload):
            for name, value in env_of(container).items():
                if name.startswith("MLFLOW_OIDC_") and "SECRET" in name:
                    assert isinstance(value, dict) and "secretKeyRef" in value, (workload["metadata"]["name"], name)


# --- the provider's CA: a ConfigMap mounted as a file ---------------------------------------------------------


def test_the_ca_config_map_is_mounted_where_the_ca_file_points() -> None:
    manifests = render(OIDC, set_values=["auth.oidc.caConfigMapKey=root.pem", "gc.enabled=true"])
    for workload in (one(manifests, "Deployment", "tracking"), one(manifests, "CronJob", "gc")):
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        assert volumes["oidc-ca"]["configMap"] == {
            "name": "corporate-ca",
            "items": [{"key": "root.pem", "path": "ca.crt"}],
        }
        for container in containers(workload):
            ca_file = env_of(container)["MLFLOW_OIDC_CA_FILE"]
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == "oidc-ca"]
            assert mount["readOnly"] is True
            assert ca_file == f"{mount['mountPath']}/{volumes['oidc-ca']['configMap']['items'][0]['path']}"


def test_without_a_ca_config_map_nothing_is_mounted_and_the_system_store_is_used() -> None:
    deployment = one(render(OIDC, set_values=["auth.oidc.caConfigMap="]), "Deployment", "tracking")
    assert "oidc-ca" not in {v["name"] for v in pod_spec(deployment)["volumes"]}
    for container in containers(deployment):
        assert "MLFLOW_OIDC_CA_FILE" not in env_of(container)


# --- the redirect URI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("set_values", "expected"),
    [
        ([], "https://mlflow.example.com/callback"),
        (["auth.oidc.redirectUri=https://ml.example.org/callback"], "https://ml.example.org/callback"),
        (["ingress.tls.enabled=false", "auth.oidc.issuer=http://sso.local"], "http://mlflow.example.com/callback"),
    ],
    ids=["first-ingress-host", "explicit", "ingress-without-tls"],
)
def test_the_redirect_uri(set_values: list[str], expected: str) -> None:
    server = tracking_containers(render(OIDC, set_values=set_values))["tracking-server"]
    assert env_of(server)["MLFLOW_OIDC_REDIRECT_URI"] == expected


def test_without_an_ingress_the_redirect_uri_is_required() -> None:
    error = render_error(BUNDLED, set_values=[*OIDC_ON_BUNDLED, "auth.oidc.redirectUri="])
    assert "auth.oidc.redirectUri is required with auth.mode=oidc" in error


# --- what the schema (or a template) refuses ------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["issuer", "clientId", "existingSecret"])
def test_oidc_without_its_required_values_is_refused(missing: str) -> None:
    error = render_error(OIDC, set_values=[f"auth.oidc.{missing}="])
    assert f"/auth/oidc/{missing}" in error


def test_oidc_on_the_chart_defaults_names_every_missing_value() -> None:
    error = render_error(BUNDLED, set_values=["auth.mode=oidc"])
    assert all(f"/auth/oidc/{name}" in error for name in ("issuer", "clientId", "existingSecret")), error


def test_an_http_issuer_is_refused_behind_the_ingress_tls() -> None:
    error = render_error(OIDC, set_values=["auth.oidc.issuer=http://sso.example.com/realms/ml"])
    assert "/auth/oidc/issuer" in error and "https://" in error
    # Without TLS at the Ingress (or without an Ingress), http is the operator's choice.
    for extra in (["ingress.tls.enabled=false"], ["ingress.enabled=false", "auth.oidc.redirectUri=http://x/callback"]):
        env = env_of(
            tracking_containers(render(OIDC, set_values=["auth.oidc.issuer=http://sso.local", *extra]))[
                "tracking-server"
            ]
        )
        assert env["MLFLOW_OIDC_ISSUER"] == "http://sso.local"


@pytest.mark.parametrize("issuer", ["sso.example.com", "ftp://sso.example.com", "https://"])
def test_an_issuer_that_is_not_a_url_is_refused(issuer: str) -> None:
    assert "/auth/oidc/issuer" in render_error(OIDC, set_values=[f"auth.oidc.issuer={issuer}"])


@pytest.mark.parametrize("mode", ["ldap", "OIDC", "true"])
def test_an_unknown_mode_is_refused(mode: str) -> None:
    error = render_error(BUNDLED, set_values=[f"auth.mode={mode}"])
    assert "/auth/mode" in error and "'oidc'" in error


@pytest.mark.parametrize("values", [OIDC, BUNDLED], ids=["oidc", "none"])
def test_auth_enabled_contradicting_the_mode_is_one_clear_error(values: Any) -> None:
    mode = "oidc" if values == OIDC else "none"
    extra = [] if values == OIDC else ["auth.mode=none"]
    error = render_error(values, set_values=["auth.enabled=true", *extra])
    lines = [line for line in error.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, error
    assert f"auth.enabled=true means auth.mode=basic and contradicts auth.mode={mode}" in lines[0]


def test_scopes_without_openid_are_refused() -> None:
    assert "/auth/oidc/scopes" in render_error(OIDC, set_values=["auth.oidc.scopes=email profile"])


# --- NetworkPolicy: egress to the provider, only with oidc -----------------------------------------------------


def _policy_of(manifests: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (policy,) = [
        p
        for p in find(manifests, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
    ]
    policy["metadata"].setdefault("namespace", "ml")
    return policy


def test_the_tracking_server_may_reach_the_provider_only_with_oidc() -> None:
    oidc_egress = _policy_of(render(OIDC), "tracking")["spec"]["egress"]
    basic_egress = _policy_of(render(OIDC, set_values=["auth.mode=basic", "auth.clientSecret=c"]), "tracking")["spec"][
        "egress"
    ]
    provider_rule = {"to": [{"ipBlock": {"cidr": "10.40.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    assert provider_rule in oidc_egress
    assert [rule for rule in oidc_egress if rule not in basic_egress] == [provider_rule]
    assert [rule for rule in basic_egress if rule not in oidc_egress] == []
    # Nothing else of the release gains a way out.
    for component in ("model-server", "trainer"):
        assert _policy_of(render(OIDC), component) == _policy_of(
            render(OIDC, set_values=["auth.mode=basic", "auth.clientSecret=c"]), component
        )


@pytest.mark.parametrize(
    ("set_values", "ports"),
    [
        ([], [443]),
        (["ingress.tls.enabled=false", "auth.oidc.issuer=http://sso.local/realms/ml"], [80]),
        (["auth.oidc.issuer=https://sso.example.com:8443/realms/ml"], [8443]),
        (["auth.oidc.networkPolicyPorts=[443,8443]"], [443, 8443]),
    ],
    ids=["https", "http", "issuer-port", "explicit-ports"],
)
def test_the_provider_port_follows_the_issuer_unless_given(set_values: list[str], ports: list[int]) -> None:
    egress = _policy_of(render(OIDC, set_values=set_values), "tracking")["spec"]["egress"]
    (rule,) = [rule for rule in egress if {"ipBlock": {"cidr": "10.40.0.0/16"}} in rule.get("to", [])]
    assert rule["ports"] == [{"protocol": "TCP", "port": port} for port in ports]


def test_an_in_cluster_provider_is_reached_by_the_tracking_server_alone() -> None:
    """Peers may select the provider's pods (e.g. Keycloak in namespace sso); computed from the selectors."""
    in_cluster = [
        "auth.oidc.issuer=https://keycloak.sso.svc:8443/realms/ml",
        'auth.oidc.networkPolicyPeers=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"sso"}}}]',
        "trainer.job.enabled=true",
    ]
    keycloak = Pod("keycloak", "sso", {"app": "keycloak"}, {"kubernetes.io/metadata.name": "sso"})
    namespace = {"kubernetes.io/metadata.name": "ml"}

    def pods(manifests: list[dict[str, Any]]) -> dict[str, Pod]:
        return {
            component: Pod(component, "ml", w["spec"]["template"]["metadata"]["labels"], namespace)
            for w in find(manifests, "Deployment")
            for component in [w["metadata"]["labels"]["app.kubernetes.io/component"]]
        }

    with_oidc = render(OIDC, set_values=in_cluster)
    policies = [_policy_of(with_oidc, c) for c in ("tracking", "model-server")]
    chart_pods = pods(with_oidc)
    assert can_connect(policies, chart_pods["tracking"], keycloak, 8443)
    assert not can_connect(policies, chart_pods["tracking"], keycloak, 8080)
    assert not can_connect(policies, chart_pods["model-server"], keycloak, 8443)
    without = render(OIDC, set_values=[*in_cluster, "auth.mode=basic", "auth.clientSecret=c"])
    assert not can_connect([_policy_of(without, "tracking")], pods(without)["tracking"], keycloak, 8443)


# --- connections: the plugin's store counts like basic auth's -------------------------------------------------


def test_the_oidc_store_counts_toward_postgres_connections() -> None:
    # 3 replicas + 1 surge x 2 workers x 8 threads x 3 stores + 5 = 197 fits 200 without auth; a fourth store does not.
    assert one(render(BUNDLED, set_values=["trackingServer.replicas=3"]), "Deployment", "tracking")
    error = render_error(BUNDLED, set_values=[*OIDC_ON_BUNDLED, "trackingServer.replicas=3"])
    assert "postgresql.maxConnections=200 is too small" in error and "need 261" in error
