"""Cross-replica event notifications, authenticated: only a replica holding the key speaks.

Any login of the database may `NOTIFY keyferry_events`, and any login may LISTEN. So each
payload carries an HMAC-SHA256 of its body under a key derived from the sealing key
(`derive_key(..., "events")`): it lives in the broker's settings or secret files, never
in the database. A notification whose MAC is missing or wrong is dropped, counted
(`keyferry_event_notifications_refused{reason}`) and logged, at most one line per
`LOG_EVERY` with the count since the last line, so a login that floods the channel cannot
flood the log. A replayed notification (someone who LISTENed sends it again) is still
authentic; receivers therefore build every event from the store, not from the payload
(relay.py), and such a replay changes nothing.

Payload: `{"v": 1, "body": "<JSON of the note>", "mac": "<hex>"}`; at most PAYLOAD_MAX
characters (PostgreSQL's own NOTIFY limit is 8000 bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from enum import StrEnum
from typing import Any

import structlog

log = structlog.get_logger("keyferry.notify")
VERSION = 1
PAYLOAD_MAX = 7900
LOG_EVERY = 60.0  # seconds between two log lines about refused notifications


class Refusal(StrEnum):
    """Why a notification was not delivered (the metric's `reason` label)."""

    UNREADABLE = "unreadable"  # not a payload of this format
    UNAUTHENTICATED = "unauthenticated"  # no MAC, or a MAC the key does not give
    NOT_OWNER = "not_owner"  # the lease it names is not the named pod's
    STALE = "stale"  # the store does not show the change it announces


class EventRefused(Exception):
    def __init__(self, refusal: Refusal, detail: str) -> None:
        super().__init__(detail)
        self.refusal = refusal
        self.detail = detail


class EventSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def wrap(self, note: dict[str, Any]) -> str:
        body = json.dumps(note, sort_keys=True, separators=(",", ":"))
        return json.dumps({"v": VERSION, "body": body, "mac": self._mac(body)})

    def unwrap(self, payload: str) -> dict[str, Any]:
        """The note of an authentic payload; EventRefused otherwise."""
        if len(payload) > PAYLOAD_MAX:
            raise EventRefused(Refusal.UNREADABLE, f"payload of {len(payload)} characters")
        try:
            outer = json.loads(payload)
        except ValueError:
            outer = None
        body = outer.get("body") if isinstance(outer, dict) else None
        mac = outer.get("mac") if isinstance(outer, dict) else None
        if not isinstance(outer, dict) or outer.get("v") != VERSION:
            raise EventRefused(Refusal.UNAUTHENTICATED, "not a signed keyferry event payload")
        if not isinstance(body, str) or not isinstance(mac, str):
            raise EventRefused(Refusal.UNAUTHENTICATED, "no body or no MAC")
        if not hmac.compare_digest(mac, self._mac(body)):
            raise EventRefused(Refusal.UNAUTHENTICATED, "the MAC does not match")
        try:
            note = json.loads(body)
        except ValueError as error:
            raise EventRefused(Refusal.UNREADABLE, str(error)[:200]) from None
        if not isinstance(note, dict):
            raise EventRefused(Refusal.UNREADABLE, "the body is not an object")
        return note

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "EventSigner(key=**********)"


class RefusedEvents:
    """How many notifications were refused, by reason, and a log line now and then."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.counts: Counter[Refusal] = Counter()
        self._clock = clock
        self._logged_at: float | None = None
        self._since: Counter[Refusal] = Counter()

    def refused(self, error: EventRefused) -> None:
        self.counts[error.refusal] += 1
        self._since[error.refusal] += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < LOG_EVERY:
            return
        log.warning(
            "event notification refused",
            reason=error.refusal.value,
            detail=error.detail,
            refused_since_last_line={k.value: n for k, n in self._since.items()},
        )
        self._logged_at = now
        self._since.clear()
