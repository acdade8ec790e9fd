"""The mutating admission webhook: annotations -> InjectionSpec -> JSON patch, behind HTTPS.

annotations.py   every keyferry.io annotation key, parsed once into an InjectionSpec
pod.py           the parts of a pod keyferry reads; who the agent runs as
patch.py         the JSON Patch operations (volumes, agent, mounts)
mutate.py        mutate(request, config) -> response: pure
review.py        AdmissionReview v1 models
server.py        HTTPS around mutate (stdlib)
registration.py  the MutatingWebhookConfiguration
config.py        WebhookConfig, from one YAML file
"""

from .annotations import InjectionSpec, parse_annotations
from .config import WebhookConfig, load_config
from .errors import InvalidAnnotation, InvalidConfig, Refused, UnsupportedPod, WebhookError
from .mutate import mutate
from .registration import registration
from .review import AdmissionRequest, AdmissionResponse, AdmissionReview
from .server import WebhookServer

__all__ = [
    "AdmissionRequest",
    "AdmissionResponse",
    "AdmissionReview",
    "InjectionSpec",
    "InvalidAnnotation",
    "InvalidConfig",
    "Refused",
    "UnsupportedPod",
    "WebhookConfig",
    "WebhookError",
    "WebhookServer",
    "load_config",
    "mutate",
    "parse_annotations",
    "registration",
]
