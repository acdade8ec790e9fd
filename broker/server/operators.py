"""The operator of an admin call: the subject of the client certificate the admin
listener's mutual TLS verified (broker.identity.operators reads it)."""

from __future__ import annotations

from typing import Any

import grpc

from broker.errors import Unauthenticated
from broker.identity.operators import RevokedSerials, operator_from_certificate
from broker.policy import Operator

PEER_CERT = "x509_pem_cert"


def operator_of(context: grpc.aio.ServicerContext[Any, Any]) -> Operator:
    """The calling operator; Unauthenticated when the call carries no client certificate
    (only possible on a listener that does not require one)."""
    certificates = list(context.auth_context().get(PEER_CERT, ()))
    if not certificates:
        raise Unauthenticated(
            "the admin listener needs a client certificate from the admin CA; "
            "see `keyferry admin init`"
        )
    return operator_from_certificate(certificates[0])


class OperatorGate:
    """The admin listener's check before any servicer runs: the client certificate's
    serial is not on the deny-list (admin.revoked_operators)."""

    def __init__(self, revoked: RevokedSerials) -> None:
        self._revoked = revoked

    def __call__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        certificates = list(context.auth_context().get(PEER_CERT, ()))
        if certificates:  # none: operator_of refuses the call
            self._revoked.check(certificates[0])
