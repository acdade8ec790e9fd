"""Cluster DNS on the node: CoreDNS built from its Go module, run as a Deployment.

The binary comes from the wrapper tests/bed/go/coredns, whose main.go imports only the
plugins the Corefile below uses (no forwarding: names outside the cluster do not resolve,
nothing leaves the machine). The image is the static binary alone, written by the bed
(ociimage.py). The pod runs as a non-root user on port 1053; the `kube-dns` Service
(10.96.0.10, what the kubelet's `clusterDNS` names) maps port 53 to it. CoreDNS watches
the API server through the `kubernetes` Service, as in any cluster.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .cluster import Cluster
from .gobuild import COREDNS, COREDNS_VERSION
from .ociimage import ImageSpec

DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
COREDNS_IMAGE = f"keyferry.invalid/coredns:{COREDNS_VERSION}"
NAMESPACE = "kube-system"
PORT = 1053

COREFILE = f""".:{PORT} {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
    loadbalance
}}
"""


def coredns_image() -> ImageSpec:
    """The image: the static CoreDNS binary (built on first use)."""
    return ImageSpec(files={"/coredns": COREDNS.binary("coredns")}, entrypoint=["/coredns"])


def manifests(toleration: Mapping[str, str]) -> dict[str, Any]:
    """CoreDNS's ServiceAccount, RBAC, Corefile, Deployment and the `kube-dns` Service."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"namespace": NAMESPACE}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", **meta}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "keyferry-bed:coredns"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["endpoints", "services", "pods", "namespaces"],
                        "verbs": ["list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["list", "watch"],
                    },
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "keyferry-bed:coredns"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "keyferry-bed:coredns",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "coredns", **meta}],
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "coredns", **meta},
                "data": {"Corefile": COREFILE},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "coredns", **meta, "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": _pod_spec(toleration),
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "kube-dns", **meta, "labels": labels},
                "spec": {
                    "selector": labels,
                    "clusterIP": DNS_SERVICE_IP,
                    "ports": [
                        {"name": "dns", "port": 53, "targetPort": PORT, "protocol": "UDP"},
                        {"name": "dns-tcp", "port": 53, "targetPort": PORT, "protocol": "TCP"},
                    ],
                },
            },
        ],
    }


def _pod_spec(toleration: Mapping[str, str]) -> dict[str, Any]:
    return {
        "serviceAccountName": "coredns",
        "tolerations": [dict(toleration)],
        "dnsPolicy": "Default",
        "securityContext": {"runAsUser": 65534, "runAsGroup": 65534, "runAsNonRoot": True},
        "containers": [
            {
                "name": "coredns",
                "image": COREDNS_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["-conf", "/etc/coredns/Corefile"],
                "ports": [
                    {"containerPort": PORT, "protocol": "UDP", "name": "dns"},
                    {"containerPort": PORT, "protocol": "TCP", "name": "dns-tcp"},
                ],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
            }
        ],
        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
    }


def deploy(cluster: Cluster, toleration: Mapping[str, str]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifests(toleration)))


def available(cluster: Cluster) -> bool:
    status = json.loads(
        cluster.kubectl("get", "deployment", "coredns", "-n", NAMESPACE, "-o", "json")
    )["status"]
    return bool(status.get("availableReplicas", 0) >= 1)
