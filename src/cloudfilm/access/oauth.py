"""OAuth 2.0 bearer tokens for machines: the client credentials grant (RFC 6749 4.4).

A RIS, a PACS or a script that speaks OAuth 2.0 trades an API key for a short-lived access
token at ``POST /oauth/token`` and sends that token as ``Authorization: Bearer …`` (RFC 6750),
exactly where an API key would go. The client is the API key: ``client_id`` is its id (shown by
``cloudfilm apikeys list``) and ``client_secret`` the whole key as it was printed
(``cfk_…``), sent with HTTP Basic (``client_secret_basic``) or in the form
(``client_secret_post``). There is no authorization server metadata document (RFC 8414):
the one endpoint and grant are documented in docs/access.md.

The access token is a JWT (RFC 9068 shape) signed with HS256 under a key derived from the
server secret: ``sub`` is ``apikey:<id>``, ``client_id``, ``scope``, ``iat``/``exp``, ``jti``,
``iss`` and ``aud`` ``cloudfilm``. Each use checks the signature and expiry *and* that the API
key is still active, so revoking the key ends its tokens at once. ``scope`` narrows what the
key's role allows: any of ``download``, ``store``, ``shares``, ``users`` (viewing the
institution's studies needs no scope); asking for more than the role allows is
``invalid_scope``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cloudfilm.access.accounts import Accounts, ApiKeyInfo, utcnow
from cloudfilm.access.roles import PERMISSIONS
from cloudfilm.api.deps import Principal
from cloudfilm.api.proxies import client_address
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.sharing.crypto import derive_key

logger = logging.getLogger(__name__)

TOKEN_PATH = "/oauth/token"
ISSUER = "cloudfilm"
#: Scopes a token may carry: the role permissions a client may ask for.
SCOPES = ("download", "store", "shares", "users")
_ALGORITHM = "HS256"
#: Longest ``client_secret`` or ``scope`` read (a bound against hostile forms).
_MAX_FIELD = 512


class OAuthError(Exception):
    """An RFC 6749 5.2 error: ``error`` code, description and HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str


class OAuthTokens:
    """Issues and checks the access tokens of one application."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.settings = settings
        self.accounts = Accounts(archive, settings)
        self._key = derive_key(settings.secret_key, b"cloudfilm oauth access token v1")

    def issue(
        self, client_id: str, client_secret: str, scope: str | None, now: datetime | None = None
    ) -> IssuedToken:
        """A token for the API key ``client_secret`` whose id is ``client_id``.

        Raises
        ------
        OAuthError
            ``invalid_client`` (401) for a wrong, unknown or revoked key or a mismatched id;
            ``invalid_scope`` for a scope the key's role does not allow.
        """
        now = now or utcnow()
        key = self.accounts.api_key(client_secret, now)
        if key is None or not secrets.compare_digest(key.key_id, client_id):
            raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
        granted = _granted(key, scope)
        lifetime = self.settings.oauth_token_minutes * 60
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": ISSUER,
            "sub": f"apikey:{key.key_id}",
            "client_id": key.key_id,
            "scope": " ".join(granted),
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=lifetime)).timestamp()),
            "jti": secrets.token_urlsafe(12),
        }
        import jwt  # here, not at import: PyJWT loads cryptography's backends (≈ 7 MB)

        token = jwt.encode(claims, self._key, algorithm=_ALGORITHM, headers={"typ": "at+jwt"})
        return IssuedToken(token, lifetime, " ".join(granted))

    def key_of(self, token: str) -> tuple[ApiKeyInfo, frozenset[str]] | None:
        """The active API key and the scope of a valid access token; None otherwise."""
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                audience=ISSUER,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "client_id", "scope"]},
            )
        except jwt.PyJWTError:
            return None
        key = self.accounts.active_api_key(str(claims["client_id"]))
        if key is None:
            return None
        return key, frozenset(str(claims["scope"]).split())


def _granted(key: ApiKeyInfo, scope: str | None) -> list[str]:
    allowed = [s for s in SCOPES if s in PERMISSIONS[key.role]]
    if scope is None or not scope.strip():
        return allowed
    asked = scope.split()
    unknown = [s for s in asked if s not in SCOPES]
    if unknown:
        raise OAuthError("invalid_scope", f"unknown scope {unknown[0]!r}; any of {SCOPES}")
    beyond = [s for s in asked if s not in allowed]
    if beyond:
        raise OAuthError("invalid_scope", f"this client's role does not allow {beyond[0]!r}")
    return [s for s in allowed if s in asked]


def narrowed(principal: Principal, scope: frozenset[str]) -> Principal:
    """``principal`` (an API key's) with only the permissions its token's scope names."""
    kept = {p for p in principal.permissions if p not in SCOPES or p in scope}
    return replace(principal, permissions=frozenset(kept))


def tokens_for(request: Request) -> OAuthTokens:
    from cloudfilm.api.deps import app_service

    return app_service(request, "oauth", OAuthTokens)


# ----------------------------------------------------------------------------- routes

router = APIRouter(tags=["oauth"])
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "malformed Basic credentials", 401)
    return client_id, secret


def _error(exc: OAuthError) -> JSONResponse:
    headers = dict(_NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="cloudfilm", charset="UTF-8"'
    body = {"error": exc.error, "error_description": exc.description}
    return JSONResponse(body, status_code=exc.status, headers=headers)


@router.post(
    TOKEN_PATH,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type"],
                        "properties": {
                            "grant_type": {"type": "string", "enum": ["client_credentials"]},
                            "scope": {"type": "string"},
                            "client_id": {"type": "string"},
                            "client_secret": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def token_endpoint(request: Request) -> JSONResponse:
    """An access token for an API key (OAuth 2.0 client credentials grant, RFC 6749 4.4).

    The form is ``grant_type=client_credentials`` and optionally ``scope``; the client
    authenticates with HTTP Basic or with ``client_id`` and ``client_secret`` in the form.
    """
    from cloudfilm.sharing.pages import read_form  # sharing imports the access package

    form = await read_form(request)
    return await anyio.to_thread.run_sync(_token_answer, request, form)


def _token_answer(request: Request, form: dict[str, str]) -> JSONResponse:
    who = ""
    try:
        if any(len(value) > _MAX_FIELD for value in form.values()):
            raise OAuthError("invalid_request", f"a field holds at most {_MAX_FIELD} characters")
        basic = _basic_credentials(request)
        if basic is not None and "client_secret" in form:
            raise OAuthError("invalid_request", "send the client's secret one way, not two")
        grant_type = form.get("grant_type", "")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            raise OAuthError(
                "unsupported_grant_type", "only the client_credentials grant is supported"
            )
        cid, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        who = cid[:64]
        if not cid or not secret:
            raise OAuthError("invalid_client", "client authentication is required", 401)
        issued = tokens_for(request).issue(cid, secret, form.get("scope"))
    except OAuthError as exc:
        _audit(request, who, "denied", exc.error)
        return _error(exc)
    _audit(request, who, "success", f"scope: {issued.scope}")
    body = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }
    return JSONResponse(body, headers=_NO_STORE)


def _audit(request: Request, who: str, outcome: str, why: str) -> None:
    """Every token request, granted or not, in the audit trail (never the secret)."""
    from cloudfilm.audit import AuditRecord, trail_for

    trail_for(request.app.state.archive).record(
        AuditRecord(
            action="oauth-token",
            outcome=outcome,
            actor_kind="apikey",
            actor_id=who,
            address=client_address(request),
            agent=request.headers.get("user-agent", ""),
            detail=why,
        )
    )
