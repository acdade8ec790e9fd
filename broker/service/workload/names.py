"""Names a pod sends: a credential's name becomes a file name inside the pod's volume (keep
it one plain name); a lease id is a UUID, checked before any lookup or log line, so junk
costs neither a store query nor log volume."""

from __future__ import annotations

import uuid

from broker.errors import InvalidRequest
from broker.identity.claims import DNS_LABEL, LABEL_MAX

MAX_LENGTH = 128
FIELD = "credential_name"


def check_credential_name(name: str) -> str:
    """The name if it is a safe file name; InvalidRequest naming the field and the fix."""
    fix = "use one file name like orders-db (letters, digits, '.', '-', '_')"
    if not name:
        raise InvalidRequest(FIELD, f"is required; {fix}")
    if len(name) > MAX_LENGTH:
        raise InvalidRequest(FIELD, f"is {len(name)} characters; at most {MAX_LENGTH} allowed")
    if name in {".", ".."}:
        raise InvalidRequest(FIELD, f"{name!r} is not a file name; {fix}")
    if "/" in name or "\\" in name:
        raise InvalidRequest(FIELD, f"{name!r} contains a path separator; {fix}")
    if not name.isprintable() or name != name.strip() or name.startswith("-"):
        raise InvalidRequest(
            FIELD, f"{name!r} has control characters, surrounding spaces or a leading '-'; {fix}"
        )
    return name


LEASE_ID_LENGTH = 36  # 8-4-4-4-12 hex digits, as the store writes them


def check_lease_id(value: str, field: str = "lease_id") -> str:
    """The lease id in the store's form; InvalidRequest naming `field` otherwise. The value
    itself is never echoed (it is whatever the caller sent)."""
    fix = "send the id Issue returned in lease.id (a UUID)"
    if not value:
        raise InvalidRequest(field, f"is required; {fix}")
    if len(value) != LEASE_ID_LENGTH:
        raise InvalidRequest(field, f"is {len(value)} characters, not a lease id; {fix}")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidRequest(field, f"is not a lease id; {fix}") from None
    return str(parsed)


MAX_RESTARTED = 128  # more than keyferry.io/restart-containers (253 characters) can name


def check_restarted(
    names: tuple[str, ...], field: str = "ack.restarted_containers"
) -> tuple[str, ...]:
    """The containers an Ack says the agent restarted, each once, in order: Kubernetes
    container names (RFC 1123 labels), at most MAX_RESTARTED; InvalidRequest naming `field`
    otherwise. Each becomes a durable audit record, so neither count nor content is the
    caller's to choose; no value is echoed."""
    fix = "send the names of the pod's app containers the agent restarted"
    if len(names) > MAX_RESTARTED:
        raise InvalidRequest(
            field, f"names {len(names)} containers, at most {MAX_RESTARTED}; {fix}"
        )
    for name in names:
        if len(name) > LABEL_MAX or not DNS_LABEL.fullmatch(name):
            raise InvalidRequest(field, f"holds a value that is not a container name; {fix}")
    return tuple(dict.fromkeys(names))
