"""Workload identity: which cluster a token belongs to, and which pod it proves."""

from .claims import InvalidClaim
from .tokens import (
    DEFAULT_LEEWAY,
    DEFAULT_MAX_LIFETIME,
    Claimed,
    ClusterKeys,
    KeyRefreshPolicy,
    TokenVerifier,
    audience_for,
    unknown_key,
)

__all__ = [
    "DEFAULT_LEEWAY",
    "DEFAULT_MAX_LIFETIME",
    "Claimed",
    "ClusterKeys",
    "InvalidClaim",
    "KeyRefreshPolicy",
    "TokenVerifier",
    "audience_for",
    "unknown_key",
]
