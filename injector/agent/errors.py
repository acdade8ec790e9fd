"""The agent's own errors. Code branches on the class, never on a message.

    AgentError
    ├── SpecError            KEYFERRY_AGENT_SPEC is missing or invalid (permanent: exit 2)
    ├── FormatError          a credential cannot be written in the asked format (permanent)
    ├── TokenError           the projected token file cannot be read (retried)
    └── BrokerError
        ├── BrokerUnavailable    UNAVAILABLE, DEADLINE_EXCEEDED, ... (retried, RetryInfo)
        │   └── BrokerLimited    RESOURCE_EXHAUSTED: a cap or rate limit (retried, RetryInfo)
        ├── WatchUnsupported     Watch answers UNIMPLEMENTED: no push; keep files, retry
        └── BrokerRefused        any other status, with its code and ErrorInfo reason (exit 1)
            └── WatchDenied      Watch refused again and again though Issue works (exit 1)

Messages name the credential, the key and the fix; never a secret value.
"""

from __future__ import annotations


class AgentError(Exception):
    """Anything the agent reports instead of a traceback."""


class SpecError(AgentError):
    """The agent spec in the environment is missing or invalid."""


class FormatError(AgentError):
    """A credential's values cannot be rendered in the asked file format."""


class TokenError(AgentError):
    """The projected service-account token file is missing or empty."""


class BrokerError(AgentError):
    """A call to the broker failed."""

    def __init__(self, message: str, code: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        """The gRPC status code's name (`PERMISSION_DENIED`)."""
        self.reason = reason
        """The broker's ErrorInfo reason (`POLICY_DENIED`), empty when none was sent."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached or asked to retry; the agent retries with backoff,
    waiting at least the broker's RetryInfo when it sent one."""

    def __init__(
        self, message: str, code: str = "", reason: str = "", *, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code, reason)
        self.retry_after = retry_after
        """The broker's RetryInfo in seconds (VAULT_UNAVAILABLE carries one, a rate limit
        too); None when none was sent (the broker unreachable, a cap that frees up only as
        leases end)."""


class BrokerLimited(BrokerUnavailable):
    """A per-pod or per-cluster cap or rate limit refused the call: wait, then retry."""


class WatchUnsupported(BrokerError):
    """The broker does not serve Watch yet: no pushed rotations; files stay, retry later."""


class BrokerRefused(BrokerError):
    """The broker refused the call for good (policy, unknown role, bad token, ...)."""


class WatchDenied(BrokerRefused):
    """Watch is refused though Issue succeeds with the same token: the policy lets the pod
    have its credentials but not follow them; the agent stops rather than retry forever."""
