"""Pods and bound tokens in a chosen namespace of a bed cluster, and a TLS client of the broker."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from kubernetes import client as k8s

from tests.bed.kube import KubeCluster

from .kube_helpers import BoundToken, core, pod

if TYPE_CHECKING:
    from broker.api.v1.broker_pb2_grpc import BrokerServiceAsyncStub

ACCOUNT = "workload"


def ensure_namespace(api: Any, namespace: str, account: str = ACCOUNT) -> None:
    v1 = core(api)
    objects: list[tuple[Any, tuple[Any, ...]]] = [
        (v1.create_namespace, (k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)),)),
        (
            v1.create_namespaced_service_account,
            (namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=account))),
        ),
    ]
    for create, args in objects:
        try:
            create(*args)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise


def mint(
    cluster: KubeCluster,
    namespace: str = "orders",
    pod_prefix: str = "app",
    audience: str | None = None,
    account: str = ACCOUNT,
    seconds: int = 600,
) -> BoundToken:
    """A new pod (unique name) in `namespace`, running as `account`, and a token bound to
    it for `audience`, valid `seconds`."""
    audience = audience or f"keyferry:{cluster.name}"
    name = f"{pod_prefix}-{secrets.token_hex(4)}"
    with cluster.api_client() as api:
        ensure_namespace(api, namespace, account)
        v1 = core(api)
        created = v1.create_namespaced_pod(namespace, pod(name, account))
        request = k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(
                audiences=[audience],
                expiration_seconds=seconds,
                bound_object_ref=k8s.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=name, uid=created.metadata.uid
                ),
            )
        )
        issued = v1.create_namespaced_service_account_token(account, namespace, request)
    return BoundToken(
        cluster.name, namespace, account, name, created.metadata.uid, audience, issued.status.token
    )


def bearer(token: BoundToken | str) -> tuple[tuple[str, str]]:
    value = token if isinstance(token, str) else token.token
    return (("authorization", f"Bearer {value}"),)


@asynccontextmanager
async def broker_stub(port: int, ca: Path) -> AsyncIterator[BrokerServiceAsyncStub]:
    from broker.api.v1 import broker_pb2_grpc  # noqa: PLC0415

    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub: BrokerServiceAsyncStub = broker_pb2_grpc.BrokerServiceStub(channel)
        yield stub


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, "the status carries no details"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in the status")


def retry_delay(error: grpc.RpcError) -> float | None:
    """The RetryInfo delay of a refused call, in seconds; None when it carries none."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None
