"""Every HTTP request that reaches patient data leaves a row in the audit trail.

The principal dependency (``cloudfilm.api.deps.get_principal``) puts the caller in the
request's state; :class:`AuditMiddleware` records, once the answer has been sent, who
(the principal, its institution, the client address and agent), what (an action named from
the route template and method, and the study of the path), and the outcome (``success``
below 400; ``denied`` for 401, 403, 404 and 410, since an unseen study answers like a missing
one; ``failure`` otherwise). Requests refused before a principal existed (a wrong key, a
forged link) are recorded as ``anonymous`` denials. Routes without patient data (health,
metrics, static files) record nothing. Paths are logged by template, never with a token.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudfilm.api.proxies import scope_client_address
from cloudfilm.audit import AuditRecord, trail_for

#: Route templates that never touch patient data.
_QUIET_PREFIXES = (
    "/health", "/metrics", "/static", "/docs", "/openapi.json", "/redoc",
    "/staff/signin",  # recorded by ``Accounts.sign_in``, with the username tried
)  # fmt: skip
_DENIED = {401, 403, 404, 410, 429}
_STUDY_PARAMS = ("study", "study_uid")


def action_of(method: str, template: str) -> str:
    """The audit action of a request (docs/audit.md)."""
    if method == "DELETE":
        return "delete"
    if template.endswith(("/revoke", "/reshares/{share_id}")):
        return "share-revoke"
    if method == "POST" and template.endswith(("/consents", "/confirm", "/withdraw")):
        if template.endswith("/withdraw"):
            return "consent-withdraw"
        return "consent-request" if template.startswith("/s/") else "consent-give"
    if method == "POST" and template.endswith(("/recognition", "/send")):
        return "recognition" if template.endswith("/recognition") else "send"
    if method == "POST":
        if template.endswith(("/unlock", "/renew")):
            return "share-open" if template.endswith("/unlock") else "share-renew"
        if template.endswith(("/api/shares", "/staff/shares", "/reshares")):
            return "share-create"
        if template.endswith("/studies") or template.endswith("/studies/{study}"):
            return "store"
        return "store" if template.endswith(("/reports", "/films")) else "update"
    if template.endswith(("download.zip",)):
        return "download"
    if template.endswith(("/metadata", "/rendered", "/thumbnail", "/bulkdata")) or (
        "/frames/" in template or template.startswith(("/viewer", "/s/{token}/viewer"))
    ):
        return "view"
    if template.endswith(("/studies", "/series", "/instances")) or template.endswith("/staff/"):
        return "query"
    if "/studies/{study}" in template or template.endswith("/wado"):
        return "retrieve"
    if template.startswith("/s/{token}"):
        return "share-view"
    return "view"


def audit_as(request: Request, action: str, detail: str = "", patient_id: str = "") -> None:
    """Name this request's audit row more precisely than its route can: ``action`` replaces
    the one :func:`action_of` would give, ``detail`` (never a secret) is added to the route
    template and status, ``patient_id`` names the patient it concerns. The row is still
    written once, by :class:`AuditMiddleware`, with the request's outcome."""
    request.state.audit_action = action
    request.state.audit_detail = detail
    request.state.audit_patient = patient_id


class AuditMiddleware:
    """Records each request with its principal and outcome (a plain ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_QUIET_PREFIXES):
            await self.app(scope, receive, send)
            return
        status = [500]

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._record(scope, status[0])

    @staticmethod
    def _record(scope: Scope, status: int) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        principal = state.get("principal")
        route = scope.get("route")
        template = getattr(route, "path", None)
        if template is None or (principal is None and status not in _DENIED):
            return  # no route (a 404 of an unknown path) or nothing that needed a principal
        app = scope.get("app")
        archive = getattr(getattr(app, "state", None), "archive", None)
        if archive is None:
            return
        params: dict[str, Any] = scope.get("path_params") or {}
        study = next((str(params[p]) for p in _STUDY_PARAMS if p in params), "")
        agent = ""
        for name, value in scope.get("headers") or ():
            if name == b"user-agent":
                agent = value.decode("latin-1")
                break
        outcome = "success" if status < 400 else "denied" if status in _DENIED else "failure"
        detail = f"{scope['method']} {template} {status}"
        if state.get("audit_detail"):
            detail = f"{detail}; {state['audit_detail']}"
        trail_for(archive).record(
            AuditRecord(
                action=state.get("audit_action") or action_of(scope["method"], template),
                outcome=outcome,
                actor_kind=principal.kind if principal else "anonymous",
                actor_id=principal.id if principal else "",
                institution=principal.institution if principal else "",
                address=scope_client_address(scope),
                agent=agent,
                patient_id=str(state.get("audit_patient") or ""),
                study_uid=study if len(study) <= 64 else "",
                detail=detail,
            )
        )
