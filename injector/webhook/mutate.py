"""`mutate`: one AdmissionRequest in, one AdmissionResponse out; no I/O, no clock, no globals.

The HTTPS server around it only decodes and encodes. Nothing here issues a credential or
calls anything, so a dry-run admission is answered exactly like a real one and has no
side effect (the registration says `sideEffects: None`).
"""

from __future__ import annotations

from pydantic import ValidationError

from injector.contract import Mode

from .annotations import INJECT, ON_ROTATE, InjectionSpec, keyferry_keys, parse_annotations
from .config import WebhookConfig
from .errors import InvalidAnnotation, Refused, UnsupportedPod
from .patch import build_patch
from .pod import Pod, RunAs, choose_run_as
from .restart import restart_spec
from .review import AdmissionRequest, AdmissionResponse, Status, encode_patch

REFUSED_CODE = 400


def mutate(request: AdmissionRequest, config: WebhookConfig) -> AdmissionResponse:
    """Allow every pod; patch those that ask for keyferry; refuse those that ask wrongly."""
    if not _is_pod_creation(request) or request.namespace in config.never_injected():
        return allowed(request)
    try:
        pod = Pod.from_object(request.object or {})
    except ValidationError as exc:
        return refused(request, f"keyferry cannot read this pod: {exc.error_count()} problem(s)")
    try:
        spec = parse_annotations(pod.metadata.annotations)
        if spec is None:
            return allowed(request, warnings=_ignored(pod))
        run_as = _run_as(pod, spec, config)
        restart = restart_spec(pod, spec.restart) if spec.restart is not None else None
        operations = build_patch(pod, spec, config, run_as, restart)
    except Refused as exc:
        return refused(request, exc.message)
    if not operations:
        return allowed(request)
    return AdmissionResponse(
        uid=request.uid, allowed=True, patch_type="JSONPatch", patch=encode_patch(operations)
    )


def allowed(request: AdmissionRequest, warnings: list[str] | None = None) -> AdmissionResponse:
    return AdmissionResponse(uid=request.uid, allowed=True, warnings=warnings or None)


def refused(request: AdmissionRequest, message: str) -> AdmissionResponse:
    return AdmissionResponse(
        uid=request.uid,
        allowed=False,
        status=Status(code=REFUSED_CODE, message=message, reason="BadRequest"),
    )


def _is_pod_creation(request: AdmissionRequest) -> bool:
    return (
        request.operation == "CREATE"
        and request.kind.group == ""
        and request.kind.kind == "Pod"
        and request.resource.resource == "pods"
        and not request.sub_resource
    )


def _ignored(pod: Pod) -> list[str]:
    keys = [k for k in keyferry_keys(pod.metadata.annotations) if k != INJECT]
    if not keys:
        return []
    return [f'keyferry: {", ".join(keys)} ignored: keyferry.io/inject is not "true"']


def _run_as(pod: Pod, spec: InjectionSpec, config: WebhookConfig) -> RunAs:
    run_as = choose_run_as(pod, config.agent.run_as_user)
    if run_as is None:
        raise UnsupportedPod(
            "spec.securityContext",
            "keyferry cannot tell which user the app runs as, so it cannot make the "
            "credential files readable by it",
            "set runAsUser (one non-root UID shared by the app containers) or fsGroup",
        )
    if spec.on_rotate is None and spec.restart is None:
        return run_as
    # Restarting is signalling too (SIGTERM, SIGKILL): the same three conditions.
    acting, verb = (
        ("signalling the app", "signals")
        if spec.restart is None
        else ("restarting the app's containers", "restarts")
    )
    if not pod.spec.share_process_namespace:
        raise InvalidAnnotation(
            ON_ROTATE,
            f"{acting} needs the agent and the app in one process namespace",
            "set spec.shareProcessNamespace: true, or write none",
        )
    if spec.mode is Mode.INIT_ONLY:
        raise InvalidAnnotation(
            ON_ROTATE,
            f"an init-only agent never rotates, so it never {verb}",
            "remove it, or set keyferry.io/mode: sidecar",
        )
    if not run_as.readable_by_owner:
        raise InvalidAnnotation(
            ON_ROTATE,
            "the agent may only signal a process of its own user, and the app containers "
            "do not name one non-root runAsUser",
            "set runAsUser (one non-root UID) on the pod or on every app container",
        )
    return run_as
