"""Map the broker's error tree to gRPC statuses with a google.rpc.ErrorInfo reason.

One table, by class: the most specific class in an error's MRO that the table names
decides the code. The reason comes from the error itself; the message is its sentence.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from broker import errors

DOMAIN = "keyferry.io"

CODES: dict[type[errors.KeyferryError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.TemporaryError: grpc.StatusCode.UNAVAILABLE,
    errors.KeyferryError: grpc.StatusCode.INTERNAL,
}


def code_for(error: errors.KeyferryError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status(error: errors.KeyferryError) -> grpc.Status:
    """Code, the error's sentence, ErrorInfo, and RetryInfo when retrying later can help
    (a temporary error, a rate limit)."""
    code = code_for(error)
    details = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    if isinstance(error, errors.InvalidRequest):
        info.metadata["field"] = error.field
    details.append(info)
    retry_after = _retry_after(error)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(int(retry_after * 1000), 1))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    proto = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=packed
    )
    status: grpc.Status = rpc_status.to_status(proto)
    return status


def _retry_after(error: errors.KeyferryError) -> float | None:
    if isinstance(error, errors.TemporaryError):
        return error.retry_after
    if isinstance(error, errors.LimitExceeded):
        return error.retry_after
    return None


def reason_of(error: grpc.RpcError) -> str | None:
    """The ErrorInfo reason of a status a client received, or None (for clients and tests)."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return None
