"""Hostile pod annotations, sent through cluster a's real API server to the webhook.

Each is refused at admission with a message naming the annotation and the fix; the pod is
not stored (so no agent ever asks for a lease); and the webhook's structured admission
log (its record of every decision) has the refusal. The parser's full range of hostile
input is fuzzed in tests/fuzz; this is the representative subset, end to end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.bed.kube import KubeCluster
from tests.scene.kube_helpers import core
from tests.scene.webhook_harness import INJECT, Harness, harnesses, pod_body

from .attack_scene import Exposure

pytestmark = pytest.mark.bed

THOUSANDS = {f"keyferry.io/role.f{i:04d}": "orders-db-ro" for i in range(3000)}

ATTACKS: dict[str, tuple[dict[str, str], str]] = {
    "path traversal": (
        {"keyferry.io/inject": "true", "keyferry.io/role...": "orders-db-ro"},
        "annotation keyferry.io/role...: the credential name '..' is not a file name",
    ),
    "absolute path": (
        {"keyferry.io/inject": "true", "keyferry.io/role./etc/shadow": "orders-db-ro"},
        "contains a path separator",
    ),
    "an address": (
        {**INJECT, "keyferry.io/broker-address": "evil.example:443"},
        "annotation keyferry.io/broker-address: is not a keyferry annotation",
    ),
    "an image": (
        {**INJECT, "keyferry.io/agent-image": "evil/agent:1"},
        "annotation keyferry.io/agent-image: is not a keyferry annotation",
    ),
    "a template": (
        {**INJECT, "keyferry.io/template.db": '{{ with secret "x" }}{{ .Data }}{{ end }}'},
        "annotation keyferry.io/template.db: is not a keyferry annotation",
    ),
    "an oversized value": (
        {**INJECT, "keyferry.io/role.db": "r" * 10_000},
        "the value is 10000 characters long",
    ),
    "thousands of keys": (
        {"keyferry.io/inject": "true", **THOUSANDS},
        "3000 credentials are asked for",
    ),
}


@pytest.fixture(scope="module")
def webhook(
    kube_clusters: dict[str, KubeCluster], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    folder = tmp_path_factory.mktemp("keyferry-webhook-attacks")
    with harnesses([kube_clusters["a"]], folder) as running:
        yield running["a"]


def admission_log(exposure: Exposure, namespace: str) -> list[dict[str, Any]]:
    """The webhook's admission records for `namespace`, from the session's log file."""
    found = []
    for line in exposure.log_file.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "admission" and entry.get("namespace") == namespace:
            found.append(entry)
    return found


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_webhook_refuses_a_hostile_annotation(
    webhook: Harness, exposure: Exposure, attack: str
) -> None:
    annotations, message = ATTACKS[attack]
    namespace = webhook.namespace("hostile")
    with pytest.raises(ApiException) as refused:
        webhook.create(namespace, pod_body("victim", annotations))
    assert refused.value.status == 400
    body = json.loads(refused.value.body or "{}")
    assert "denied the request" in body["message"]
    assert message in body["message"]
    exposure.said("webhook refusal", body["message"])
    with webhook.cluster.api_client() as api, pytest.raises(ApiException) as missing:
        core(api).read_namespaced_pod("victim", namespace)
    assert missing.value.status == 404
    [record] = admission_log(exposure, namespace)
    assert (record["pod"], record["allowed"], record["patched"]) == ("victim", False, False)
    assert message in record["refusal"]
