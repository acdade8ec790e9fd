"""AdmissionReview v1 as the API server sends and expects it, and JSON Patch operations.

Only the fields keyferry reads or writes are modelled; the rest of a request is ignored.
The pod itself stays a plain mapping here: `pod.py` reads the parts of it that matter.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_VERSION: Final = "admission.k8s.io/v1"
KIND: Final = "AdmissionReview"


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class GroupVersionKind(_Camel):
    group: str = ""
    version: str
    kind: str


class GroupVersionResource(_Camel):
    group: str = ""
    version: str
    resource: str


class AdmissionRequest(_Camel):
    uid: str = Field(min_length=1)
    kind: GroupVersionKind
    resource: GroupVersionResource
    sub_resource: str | None = None
    name: str | None = None
    namespace: str | None = None
    operation: str
    object: dict[str, Any] | None = None
    dry_run: bool = False


class Status(_Camel):
    code: int
    message: str
    reason: str | None = None


class AdmissionResponse(_Camel):
    uid: str
    allowed: bool
    status: Status | None = None
    patch_type: Literal["JSONPatch"] | None = None
    patch: str | None = None
    """base64 of the JSON Patch document."""
    warnings: list[str] | None = None

    def operations(self) -> list[dict[str, Any]]:
        """The decoded JSON Patch (empty when there is none)."""
        if self.patch is None:
            return []
        decoded: list[dict[str, Any]] = json.loads(base64.b64decode(self.patch))
        return decoded


class AdmissionReview(_Camel):
    api_version: Literal["admission.k8s.io/v1"] = API_VERSION
    kind: Literal["AdmissionReview"] = KIND
    request: AdmissionRequest | None = None
    response: AdmissionResponse | None = None

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class PatchOperation(BaseModel):
    """One RFC 6902 operation; keyferry only ever adds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    op: Literal["add"] = "add"
    path: str
    value: Any


def encode_patch(operations: list[PatchOperation]) -> str:
    return base64.b64encode(
        json.dumps([o.model_dump() for o in operations], separators=(",", ":")).encode()
    ).decode()
