"""The MutatingWebhookConfiguration that points a cluster's API server at the webhook.

Plain JSON (the webhook does not need the Kubernetes client); the bed's tests create it
with the client and the Helm chart will render the same fields.

failurePolicy is `Fail`. With `Ignore`, an API server that cannot reach the webhook would
store an annotated pod without its agent: the app would start without its credentials (or
with stale ones from a copied spec), and no controller would ever retry. With `Fail` the
pod creation is refused and the ReplicaSet, Job or StatefulSet controller retries it with
backoff until the webhook is back. The price is that a webhook outage stops pod creation
in every selected namespace; so the webhook's own namespace and kube-system are always
excluded (the webhook and the cluster's core can always restart), the webhook runs
replicated, and `opt_in_label` can narrow it to namespaces that ask for keyferry.
"""

from __future__ import annotations

from typing import Any

from .config import WebhookConfig

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
ALWAYS_EXCLUDED = ("kube-system",)
DEFAULT_TIMEOUT_SECONDS = 5
FAILURE_POLICY = "Fail"


def registration(
    name: str,
    url: str,
    ca_bundle: str,
    config: WebhookConfig,
    *,
    opt_in_label: tuple[str, str] | None = None,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration named `name`; `ca_bundle` is base64 of the CA's PEM."""
    excluded = sorted({*ALWAYS_EXCLUDED, *config.never_injected()})
    expressions: list[dict[str, Any]] = [
        {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": excluded}
    ]
    if opt_in_label is not None:
        key, value = opt_in_label
        expressions.append({"key": key, "operator": "In", "values": [value]})
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"{name}.keyferry.io",
                "clientConfig": {"url": url, "caBundle": ca_bundle},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchExpressions": expressions},
                "failurePolicy": FAILURE_POLICY,
                "sideEffects": "None",
                "timeoutSeconds": timeout_seconds,
                "reinvocationPolicy": "IfNeeded",
                "admissionReviewVersions": ["v1"],
                "matchPolicy": "Equivalent",
            }
        ],
    }
