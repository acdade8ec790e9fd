"""The demo's narration: numbered steps and facts on stdout, secrets masked unless asked."""

from __future__ import annotations

import sys

MASK = "********"


class Narrator:
    def __init__(self, show_secrets: bool) -> None:
        self.show_secrets = show_secrets
        self.step = ""

    def begin(self, number: int, title: str) -> None:
        self.step = f"step {number} ({title})"
        self.line(f"== {number}. {title}")

    def line(self, text: str) -> None:
        print(f"[demo] {text}", flush=True)

    def detail(self, text: str) -> None:
        print(f"[demo]     {text}", flush=True)

    def secret_text(self, text: str, *secrets: str) -> str:
        """`text` with every one of `secrets` masked, unless --show-secrets."""
        if self.show_secrets:
            return text
        for secret in secrets:
            if secret:
                text = text.replace(secret, MASK)
        return text

    def failed(self, error: BaseException) -> None:
        print(f"[demo] FAILED at {self.step}: {type(error).__name__}: {error}", flush=True)
        print(f"[demo] FAILED at {self.step}: {error}", file=sys.stderr, flush=True)
