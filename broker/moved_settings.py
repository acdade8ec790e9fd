"""Settings that moved to the group of the subsystem they tune, and the old keys' one
release of grace.

In 0.1.0 the broker's `scheduler` group held the intervals of unrelated jobs, and
`rotation.revoke_interval` drove both the revocation job and the resumption of rotations
by selector. Each knob now lives with its subsystem. A file (or a KEYFERRY_* variable)
that still uses an old key keeps working for one more release: its value lands at the
new key (both new keys where one old key drove two jobs) and a `SettingMoved` warning
names the old and the new key. An old and a new key given together with different values
is a `MovedConflict`: the broker cannot tell which one is meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MOVED: dict[str, tuple[str, ...]] = {
    "rotation.revoke_interval": ("revocation.interval", "rotation.resume_interval"),
    "rotation.reconcile_interval": ("reconcile.interval",),
    "rotation.orphan_age": ("reconcile.orphan_age",),
    "scheduler.revoke_backoff": ("revocation.backoff",),
    "scheduler.revoke_backoff_cap": ("revocation.backoff_cap",),
    "scheduler.vault_token": ("vault.token_check_interval",),
    "scheduler.jwks_refresh": ("tokens.jwks_refresh_interval",),
    "scheduler.pod_sweep": ("pods.sweep_interval",),
    "scheduler.audit_checkpoint": ("audit.checkpoint_interval",),
    "scheduler.scheduled_rotation": ("rotation.schedule_interval",),
    "scheduler.store_statistics": ("store.statistics_interval",),
}


class SettingMoved(FutureWarning):
    """An old key was used; its value was taken as the new key's. Shown to users by
    default (a FutureWarning); `keyferry` commands print it as a warning line."""

    def __init__(self, old: str, new: tuple[str, ...]) -> None:
        self.old = old
        self.new = new
        super().__init__(
            f"setting {old} is deprecated and is removed after 0.1.0; "
            f"write {' and '.join(new)} instead (the value was taken as "
            f"{'both' if len(new) > 1 else 'that'})"
        )


@dataclass(frozen=True)
class MovedConflict:
    """An old key and its new key were both given, with different values."""

    old: str
    new: str

    def text(self) -> str:
        return (
            f"{self.old} was renamed to {self.new} and both are given with different values; "
            f"keep only {self.new}"
        )


@dataclass(frozen=True)
class Moves:
    """What `move_old_keys` did: the values it moved (one warning each) and the conflicts."""

    moved: list[SettingMoved]
    conflicts: list[MovedConflict]


def move_old_keys(data: dict[str, Any]) -> Moves:
    """Move every old key's value in `data` (nested mappings, as in the file) to its new
    key(s), in place. A group that is not a mapping is left for validation to report."""
    moved: list[SettingMoved] = []
    conflicts: list[MovedConflict] = []
    for old, news in MOVED.items():
        group, key = old.split(".")
        section = data.get(group)
        if not isinstance(section, dict) or key not in section:
            continue
        value = section.pop(key)
        for new in news:
            new_group, new_key = new.split(".")
            target = data.setdefault(new_group, {})
            if not isinstance(target, dict):
                continue
            if new_key in target and target[new_key] != value:
                conflicts.append(MovedConflict(old, new))
            else:
                target[new_key] = value
        moved.append(SettingMoved(old, news))
    return Moves(moved, conflicts)
