"""Workload identity: which cluster a token belongs to, and which pod it proves."""

from .tokens import DEFAULT_LEEWAY, ClusterKeys, TokenVerifier, audience_for

__all__ = ["DEFAULT_LEEWAY", "ClusterKeys", "TokenVerifier", "audience_for"]
