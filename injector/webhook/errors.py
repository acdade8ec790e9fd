"""The webhook's error tree. Code branches on the class, never on the message.

    WebhookError
    ├── Refused               the pod is refused (admission denied, HTTP 400 in the status)
    │   ├── InvalidAnnotation     `key` is the keyferry.io annotation to fix
    │   └── UnsupportedPod        `field` is the pod field to fix
    └── InvalidConfig         the webhook's own configuration file is wrong (exit code 2)

Every message names what is wrong and how to fix it: the API server hands it to the person
who ran `kubectl apply` as "admission webhook ... denied the request: <message>".
"""

from __future__ import annotations


class WebhookError(Exception):
    """Base of every error the webhook raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Refused(WebhookError):
    """The pod cannot be admitted as it is."""


class InvalidAnnotation(Refused):
    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"annotation {key}: {problem}; {fix}")
        self.key = key


class UnsupportedPod(Refused):
    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"pod field {field}: {problem}; {fix}")
        self.field = field


class InvalidConfig(WebhookError):
    """The webhook's configuration file is missing, unreadable or invalid."""
