"""The projected service-account token: read from its file on every call, never cached,
because the kubelet replaces it before it expires."""

from __future__ import annotations

from pathlib import Path

from .errors import TokenError


def read_token(path: Path) -> str:
    """The token's text, stripped; TokenError when the file is missing or empty."""
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(
            f"cannot read the projected service-account token at {path}: {exc.__class__.__name__}"
            "; the pod needs the keyferry-token volume the webhook adds"
        ) from exc
    if not token:
        raise TokenError(f"the projected service-account token at {path} is empty")
    return token
