"""Operators on the admin listener, as their verified client certificate names them.

The TLS layer has already verified the chain against the admin CA (the listener requires
a client certificate); this only reads the subject: CN is the operator's name, each O
attribute one group (as Kubernetes reads client certificates). OU and other attributes
are ignored. A certificate without exactly one CN names nobody and is refused.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from broker.errors import Unauthenticated
from broker.policy import Operator


def operator_from_certificate(pem: bytes) -> Operator:
    """The Operator a PEM client certificate names; Unauthenticated when it names none."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise Unauthenticated("the client certificate cannot be read") from exc
    names = [_text(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(names) != 1 or not names[0]:
        raise Unauthenticated(
            "the client certificate's subject must have exactly one CN (the operator's name); "
            "issue one with `keyferry admin issue-operator`"
        )
    groups = [
        _text(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    ]
    return Operator(name=names[0], groups=tuple(dict.fromkeys(g for g in groups if g)))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
