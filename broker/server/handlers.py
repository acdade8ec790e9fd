"""Wrap servicer methods so a KeyferryError ends the call with its mapped status, and so
the flows know the calling peer (broker.service.CALLER_PEER, for refusal records)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from broker.errors import KeyferryError
from broker.service import CALLER_PEER

from .status import to_status

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


def unary(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    @functools.wraps(method)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Resp:
        CALLER_PEER.set(context.peer())
        try:
            return await method(self, request, context)
        except KeyferryError as error:
            await context.abort_with_status(to_status(error))
            raise  # abort_with_status raises; this line is never reached

    return wrapper


def streaming(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    @functools.wraps(method)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Resp]:
        CALLER_PEER.set(context.peer())
        try:
            async for item in method(self, request, context):
                yield item
        except KeyferryError as error:
            await context.abort_with_status(to_status(error))
            raise

    return wrapper
