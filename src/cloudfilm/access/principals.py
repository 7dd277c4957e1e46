"""Users and API clients as request principals (``cloudfilm.api.deps.resolve_principal``)."""

from __future__ import annotations

from functools import partial

from starlette.requests import Request

from cloudfilm.access.accounts import Accounts, ApiKeyInfo, InstitutionInfo, UserInfo
from cloudfilm.access.roles import PERMISSIONS
from cloudfilm.access.visibility import institution_sees, principal_sees
from cloudfilm.api.deps import STAFF_COOKIE, Principal, app_service
from cloudfilm.archive import Archive
from cloudfilm.core.errors import Unauthorized


def accounts_for(request: Request) -> Accounts:
    """The application's :class:`Accounts` (made once, with the application's settings)."""
    return app_service(request, "accounts", Accounts)


def principal_of_request(request: Request) -> Principal | None:
    """The API client of an ``Authorization`` header (an API key or an OAuth access token;
    401 when it is not valid), else the signed-in user of the staff cookie, else None."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
        if not value.startswith("cfk_") and value.count(".") == 2:  # an OAuth access token
            from cloudfilm.access.oauth import narrowed, tokens_for

            found = tokens_for(request).key_of(value)
            if found is None:
                raise Unauthorized("this access token is not valid (expired, forged or revoked)")
            return narrowed(key_principal(request.app.state.archive, found[0]), found[1])
        key = accounts_for(request).api_key(value)
        if key is None:
            raise Unauthorized("this API key is not valid (wrong, or revoked)")
        return key_principal(request.app.state.archive, key)
    cookie = request.cookies.get(STAFF_COOKIE)
    if cookie:
        user = accounts_for(request).user_from_cookie(cookie)
        if user is not None:
            return user_principal(request.app.state.archive, user)
    return None


def user_principal(archive: Archive, user: UserInfo) -> Principal:
    return _principal(archive, "user", user.username, user.role, user.institution)


def key_principal(archive: Archive, key: ApiKeyInfo) -> Principal:
    return _principal(archive, "apikey", key.key_id, key.role, key.institution)


def _principal(
    archive: Archive, kind: str, ident: str, role: str, inst: InstitutionInfo | None
) -> Principal:
    return Principal(
        kind=kind,
        id=ident,
        permissions=PERMISSIONS[role],
        role=role,
        institution_pk=inst.pk if inst else None,
        institution=inst.code if inst else "",
        sees=partial(principal_sees, archive.engine, inst.pk, ident if kind == "user" else None)
        if inst
        else None,
        holds=partial(institution_sees, archive.engine, inst.pk) if inst else None,
    )
