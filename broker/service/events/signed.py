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

Payload: `{"v": 1, "body": "<JSON of the note>", "mac": "<hex>", "kid": "<key id>"}`; at
most PAYLOAD_MAX characters (PostgreSQL's own NOTIFY limit is 8000 bytes). The MAC is made
under the current key of the ring (broker/store/keyring.py) and `kid` names it; a receiver
checks it under that key when its ring holds it, so replicas whose rings list the same keys
in another order understand each other during a key rotation. A note without `kid` (from a
replica before key rings; they ignore `kid`) is checked under every key of the ring.
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

from broker.store.keyring import KeyMissing, KeyRing

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
    """Signs under the current key of the events ring (`KeyRing.derive("events")`, or one
    raw key); verifies under the key a note names, or any key of the ring."""

    def __init__(self, keys: KeyRing | bytes) -> None:
        self._ring = KeyRing.coerce(keys)

    def wrap(self, note: dict[str, Any]) -> str:
        body = json.dumps(note, sort_keys=True, separators=(",", ":"))
        current = self._ring.current
        mac = self._mac(current.secret, body)
        return json.dumps({"v": VERSION, "body": body, "mac": mac, "kid": current.name})

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
        if not any(hmac.compare_digest(mac, self._mac(key, body)) for key in self._keys(outer)):
            raise EventRefused(Refusal.UNAUTHENTICATED, "the MAC does not match")
        try:
            note = json.loads(body)
        except ValueError as error:
            raise EventRefused(Refusal.UNREADABLE, str(error)[:200]) from None
        if not isinstance(note, dict):
            raise EventRefused(Refusal.UNREADABLE, "the body is not an object")
        return note

    def _keys(self, outer: dict[str, Any]) -> list[bytes]:
        kid = outer.get("kid")
        if kid is None:
            return [key.secret for key in self._ring]
        try:
            return [self._ring.get(bytes.fromhex(kid)).secret] if isinstance(kid, str) else []
        except (KeyMissing, ValueError):
            raise EventRefused(
                Refusal.UNAUTHENTICATED, f"signed under key {str(kid)[:16]}, not in the ring"
            ) from None

    @staticmethod
    def _mac(key: bytes, body: str) -> str:
        return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"EventSigner(keys={self._ring.names})"


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
