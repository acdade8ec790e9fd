"""The pods a member cluster runs now, as its pod watch last reported them, so the pod check
of a call can be answered without a round trip to the API server.

The set is trusted only while it is whole and fresh: `replace` (after the watch's full
list) makes it whole, every watch event and every watch call that ends normally (the API
server closes one every WATCH_SECONDS) marks it heard, and a failed or stopped watch makes
it untrusted until the next full list. Only a positive answer is taken from it: the pod is
there, with the token's UID, and is not terminating or finished. Anything else — a pod not
seen yet, a UID that differs, a terminating pod, a set not trusted — is asked of the API
server, exactly as without the set. So a deleted pod's token is refused as soon as the
watch delivers the deletion, and at the latest `stale_after` seconds after the watch was
last heard from (a watch whose connection hangs silently); docs/security.md states the bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LivePod:
    uid: str
    ending: bool  # deletionTimestamp set, or phase Succeeded/Failed: no new credentials
    service_account: str = ""  # spec.serviceAccountName (who-can groups pods by it)


class LivePods:
    """One cluster's live pods by (namespace, name); written by the watch thread, read on
    the event loop."""

    def __init__(self, stale_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._stale_after = stale_after
        self._clock = clock
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], LivePod] = {}
        self._whole = False
        self._heard = float("-inf")

    def replace(self, pods: Iterable[tuple[str, str, LivePod]]) -> None:
        """The whole set, from a full list: trusted from now on."""
        fresh = {(namespace, name): pod for namespace, name, pod in pods}
        with self._lock:
            self._pods = fresh
            self._whole = True
            self._heard = self._clock()

    def put(self, namespace: str, name: str, pod: LivePod) -> None:
        with self._lock:
            self._pods[(namespace, name)] = pod
            self._heard = self._clock()

    def remove(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            held = self._pods.get((namespace, name))
            if held is not None and held.uid == uid:
                del self._pods[(namespace, name)]
            self._heard = self._clock()

    def heard(self) -> None:
        """The watch is alive (a bookmark, or a watch call that ended normally)."""
        with self._lock:
            self._heard = self._clock()

    def lost(self) -> None:
        """The watch failed or stopped: trust nothing until the next full list."""
        with self._lock:
            self._whole = False
            self._pods = {}

    def snapshot(self) -> list[tuple[str, str, LivePod]] | None:
        """Every pod as (namespace, name, pod) while the set is trusted; None otherwise
        (who-can then lists the API server's pods instead)."""
        with self._lock:
            if not self._whole or self._clock() - self._heard > self._stale_after:
                return None
            return [(namespace, name, pod) for (namespace, name), pod in self._pods.items()]

    def __len__(self) -> int:
        return len(self._pods)

    def vouches(self, namespace: str, name: str, uid: str, *, allow_ending: bool) -> bool:
        """True only if the set is trusted and holds the pod with `uid` (not ending, unless
        `allow_ending`); False means "ask the API server", never "refuse"."""
        with self._lock:
            if not self._whole or self._clock() - self._heard > self._stale_after:
                return False
            pod = self._pods.get((namespace, name))
        return pod is not None and pod.uid == uid and (allow_ending or not pod.ending)
