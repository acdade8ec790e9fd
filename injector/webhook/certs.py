"""The webhook's serving certificate, reloaded when its files change, without a restart.

cert-manager, a Secret volume or an operator replaces `tls.crt` and `tls.key` while the
webhook runs (a Secret volume swaps a `..data` symlink, so both files change at once; a
hand copy may change one, then the other). Before every TLS handshake the server asks
`ReloadingContext.current()`, which compares both files' (device, inode, size, mtime)
with what it loaded — two `stat` calls, nothing next to a handshake — and loads the pair
again when either differs. New handshakes use the new certificate; connections already
open keep theirs. A pair that does not load (half written, a key that does not match the
certificate) is logged once and the previous context stays in use; the next change of
either file is tried again.
"""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path

import structlog

from .errors import InvalidConfig

log = structlog.get_logger(__name__)

Stamp = tuple[tuple[int, int, int, int], ...]


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidConfig(f"cannot load the serving certificate {cert_file}: {exc}") from exc
    return context


class ReloadingContext:
    """The current SSLContext for `cert_file` and `key_file`; InvalidConfig at start when the
    pair does not load, so a webhook never starts without a certificate."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self._files = (cert_file, key_file)
        self._lock = threading.Lock()
        self._stamp = self._read_stamp()
        self._context = server_context(cert_file, key_file)
        self._failed: Stamp | None = None
        self.reloads = 0
        """How many times a changed pair was loaded (for tests and the log)."""

    def current(self) -> ssl.SSLContext:
        with self._lock:
            stamp = self._read_stamp()
            if stamp not in (self._stamp, self._failed):
                self._reload(stamp)
            return self._context

    def _reload(self, stamp: Stamp) -> None:
        try:
            context = server_context(*self._files)
        except InvalidConfig as exc:
            self._failed = stamp
            log.warning(
                "webhook certificate not reloaded; serving the previous one", error=str(exc)
            )
            return
        self._context, self._stamp, self._failed = context, stamp, None
        self.reloads += 1
        log.info("webhook certificate reloaded", cert_file=str(self._files[0]))

    def _read_stamp(self) -> Stamp:
        stamps = []
        for path in self._files:
            try:
                info = os.stat(path)
            except OSError:
                stamps.append((0, 0, -1, 0))  # missing for now: a change, tried when back
                continue
            stamps.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(stamps)
