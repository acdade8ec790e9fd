"""A credential's name becomes a file name inside the pod's volume: keep it one plain name."""

from __future__ import annotations

from broker.errors import InvalidRequest

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
