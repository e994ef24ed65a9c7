"""Who can reach whom under a set of NetworkPolicies, computed from their selectors (not their text).

Follows the Kubernetes semantics (https://kubernetes.io/docs/concepts/services-networking/network-policies/):
a pod selected by no policy of a direction allows everything in that direction; once selected, only what
some rule of a selecting policy allows gets through, and a connection needs both the source's egress and the
destination's ingress. A peer with podSelector alone means pods of the policy's namespace; with a
namespaceSelector, pods of the matching namespaces. ipBlock peers are for cluster-external addresses (the
docs leave pod IPs to the plugin), so here they match no pod. Policies must carry metadata.namespace
(`helm template` leaves it out: the caller sets the release namespace).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    namespace_labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # named container ports


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def peer_matches(peer: dict[str, Any], policy_namespace: str, pod: Pod) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], pod.namespace_labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selector_matches(peer.get("podSelector", {}), pod.labels)


def port_matches(rule_ports: list[dict[str, Any]] | None, pod: Pod, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        number = pod.ports.get(wanted) if isinstance(wanted, str) else wanted
        if number is not None and number <= port <= entry.get("endPort", number):
            return True
    return False


def _direction_allows(
    policies: list[Manifest], subject: Pod, other: Pod, port_owner: Pod, port: int, protocol: str, direction: str
) -> bool:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and selector_matches(p["spec"]["podSelector"], subject.labels)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        namespace = policy["metadata"]["namespace"]
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if peers and not any(peer_matches(peer, namespace, other) for peer in peers):
                continue
            if port_matches(rule.get("ports"), port_owner, port, protocol):
                return True
    return False


def can_connect(policies: list[Manifest], source: Pod, destination: Pod, port: int, protocol: str = "TCP") -> bool:
    return _direction_allows(
        policies, source, destination, destination, port, protocol, "Egress"
    ) and _direction_allows(policies, destination, source, destination, port, protocol, "Ingress")
