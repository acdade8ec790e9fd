"""The call interceptor counts, times and maps every method of every service, over a real
gRPC connection: the services are walked from the generated descriptors, so a method added
to a .proto is covered without touching this test."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

import broker.api.v1
from broker import errors
from broker.server.interceptors import Call, CallInterceptor, current_call, method_label
from broker.server.metrics import BrokerMetrics
from broker.server.status import reason_of


def services() -> Iterator[tuple[Any, ServiceDescriptor]]:
    """(the *_pb2_grpc module, the service) for every service of the broker's API."""
    for module in pkgutil.iter_modules(broker.api.v1.__path__):
        if not module.name.endswith("_pb2"):
            continue
        messages = importlib.import_module(f"broker.api.v1.{module.name}")
        for service in messages.DESCRIPTOR.services_by_name.values():
            yield importlib.import_module(f"broker.api.v1.{module.name}_grpc"), service


def refusing_servicer(grpc_module: Any, service: ServiceDescriptor) -> Any:
    """A servicer whose every method refuses with NotFound, streaming or not."""

    def refuse(method: MethodDescriptor) -> Any:
        if method.server_streaming:

            async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                raise errors.NotFound(f"{method.name} found nothing")
                yield  # an async generator, like a streaming servicer method

            return stream

        async def unary(self: Any, request: Any, context: Any) -> Any:
            raise errors.NotFound(f"{method.name} found nothing")

        return unary

    base = getattr(grpc_module, f"{service.name}Servicer")
    return type(base.__name__, (base,), {m.name: refuse(m) for m in service.methods})()


async def call(channel: Any, service: ServiceDescriptor, method: Any) -> None:
    """Call `method` with an empty request (no stub: bytes through the generic callables)."""
    path = f"/{service.full_name}/{method.name}"
    if method.client_streaming and method.server_streaming:
        async for _ in channel.stream_stream(path)(iter([])):
            pass
    elif method.client_streaming:
        await channel.stream_unary(path)(iter([]))
    elif method.server_streaming:
        async for _ in channel.unary_stream(path)(b""):
            pass
    else:
        await channel.unary_unary(path)(b"")


ALL = [(module, service) for module, service in services()]


def test_the_api_has_the_services_the_walk_expects() -> None:
    names = {service.name for _, service in ALL}
    assert {"BrokerService", "RotationService", "RolesService", "ClustersService"} <= names
    assert "AccessService" in names


async def test_every_method_of_every_service_is_counted_timed_and_mapped() -> None:
    metrics = BrokerMetrics(lambda: 0.0)
    server = grpc.aio.server(interceptors=[CallInterceptor(metrics)])
    for module, service in ALL:
        add = getattr(module, f"add_{service.name}Servicer_to_server")
        add(refusing_servicer(module, service), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    counted = 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _, service in ALL:
                for method in service.methods:
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await call(channel, service, method)
                    assert failed.value.code() == grpc.StatusCode.NOT_FOUND, method.full_name
                    assert reason_of(failed.value) == "NOT_FOUND"
                    labels = {"method": f"{service.name}/{method.name}", "outcome": "not_found"}
                    total = metrics.registry.get_sample_value("keyferry_calls_total", labels)
                    timed = metrics.registry.get_sample_value(
                        "keyferry_call_duration_seconds_count", labels
                    )
                    assert (total, timed) == (1.0, 1.0), method.full_name
                    counted += 1
    finally:
        await server.stop(None)
    assert counted >= 23  # the methods the decorators used to cover, at least


class Echo:
    """Answers with its call's request id; fails when asked to."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def behave(self, request: bytes, context: Any) -> bytes:
        self.ids.append(current_call().request_id)
        if request == b"boom":
            raise RuntimeError("a bug, not a refusal")
        if request == b"replay":
            current_call().outcome = "replayed"
        return request


@pytest.fixture
async def echo() -> AsyncIterator[tuple[grpc.aio.Channel, Echo, BrokerMetrics]]:
    metrics, servicer = BrokerMetrics(lambda: 0.0), Echo()
    server = grpc.aio.server(interceptors=[CallInterceptor(metrics)])
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(servicer.behave)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, servicer, metrics
    finally:
        await server.stop(None)


async def test_each_call_gets_a_request_id_of_its_own_and_its_outcome(
    echo: tuple[grpc.aio.Channel, Echo, BrokerMetrics],
) -> None:
    channel, servicer, metrics = echo
    say: Any = channel.unary_unary("/test.Echo/Say")
    assert await say(b"hi") == b"hi"
    assert await say(b"replay") == b"replay"
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await say(b"boom")
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    assert len(set(servicer.ids)) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in servicer.ids)
    for outcome in ("ok", "replayed", "internal"):
        labels = {"method": "Echo/Say", "outcome": outcome}
        assert metrics.registry.get_sample_value("keyferry_calls_total", labels) == 1.0


def test_the_method_label_is_the_service_and_method_without_the_package() -> None:
    assert method_label("/broker.api.v1.BrokerService/Issue") == "BrokerService/Issue"
    assert method_label("/grpc.health.v1.Health/Check") == "Health/Check"


def test_log_events_name_the_method_in_snake_case() -> None:
    assert Call("BrokerService/Issue", "r").event("refused") == "issue refused"
    assert Call("RotationService/RotateLeases", "r").event("answered") == "rotate_leases answered"


def test_current_call_outside_a_call_says_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match="CallInterceptor"):
        current_call()
