"""Admin pages: users, API keys and institutions (docs/access.md, "Admin pages").

- ``GET /staff/admin/users``: the users an admin manages, and the form that creates one (an
  initial password typed twice, or one generated and shown once).
- ``GET /staff/admin/users/{username}``: one user and the forms that change their role,
  disable or enable them, and reset their password.
- ``POST /staff/admin/users`` and ``/staff/admin/users/{username}/{disable|enable|role|
  password}``.
- ``GET/POST /staff/admin/keys`` and ``POST /staff/admin/keys/{key_id}/revoke``: API keys
  (a new key is shown once).
- ``GET/POST /staff/admin/institutions``: the platform admin's list of institutions.

Who may do what. An institution's ``admin`` manages the users and keys of its own institution
only: another institution's user or key, and every platform admin, answers 404 like one that
does not exist. It cannot create a platform admin (nor a platform key), and cannot disable,
re-role or reset itself (it would lock itself out; its own password changes on
``/staff/password``). The ``platform-admin`` manages every institution's users and keys and
the institutions. API keys and OAuth tokens whose role allows ``users`` may read these pages
but cannot post their forms (a form needs the browser's CSRF cookie).

Every form carries a CSRF token of its own purpose; every request is in the audit trail with
a precise action (``user-create``, ``user-disable``, ``user-enable``, ``user-role``,
``user-password-reset``, ``apikey-create``, ``apikey-revoke``, ``institution-create``; the
pages themselves ``admin-view``) and the account it acted on (never a password or key):
:func:`audit_as` hands them to :class:`cloudfilm.api.audit.AuditMiddleware`.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from cloudfilm.access.accounts import (
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    Accounts,
    ApiKeyInfo,
    UserInfo,
    check_password_rules,
)
from cloudfilm.access.principals import accounts_for
from cloudfilm.access.roles import PLATFORM_ADMIN, ROLES
from cloudfilm.api.audit import audit_as
from cloudfilm.api.deps import Principal, PrincipalDep
from cloudfilm.core.errors import Conflict, Forbidden, MalformedRequest, NotFound
from cloudfilm.sharing.csrf import check_form
from cloudfilm.sharing.pages import read_form
from cloudfilm.sharing.staff import FORM_LIMIT, StaffRoute, csrf_keys, render_staff
from cloudfilm.sharing.staff_forms import text_field

admin_router = APIRouter(prefix="/staff/admin", route_class=StaffRoute, include_in_schema=False)

#: Length of a generated password, in URL-safe characters (120 random bits).
GENERATED_BYTES = 15
_NO_STORE = {"Cache-Control": "no-store"}
#: Fields of the create form shown again when it is refused (never the passwords).
_KEPT_FIELDS = ("username", "display_name", "role", "institution")


# ------------------------------------------------------------------------------- who may


def require_admin(principal: Principal) -> Principal:
    """The caller when its role manages users (admin, platform admin); else 403."""
    if not principal.can_manage_users():
        raise Forbidden("only administrators may manage users and API keys")
    return principal


def _scope(principal: Principal) -> str | None:
    """The institution whose accounts the admin manages; None for every institution."""
    return None if principal.all_institutions else principal.institution


def _check_browser(principal: Principal) -> None:
    if principal.kind != "user":
        raise Forbidden("sign in with an administrator's account to change accounts")


def _managed_user(accounts: Accounts, principal: Principal, username: str) -> UserInfo:
    """The user ``username`` when the admin manages them; NotFound otherwise (another
    institution's user looks like one that does not exist)."""
    if len(username) > 64:
        raise NotFound("user not found")
    try:
        user = accounts.user(username)
    except NotFound:
        raise NotFound("user not found") from None
    scope = _scope(principal)
    if scope is not None and (user.institution is None or user.institution.code != scope):
        raise NotFound("user not found")
    return user


def _not_self(principal: Principal, user: UserInfo) -> None:
    if principal.kind == "user" and principal.id == user.username:
        raise MalformedRequest(
            "you cannot change your own account here (it could lock you out); "
            "change your own password on the password page"
        )


def _managed_key(accounts: Accounts, principal: Principal, key_id: str) -> ApiKeyInfo:
    scope = _scope(principal)
    for key in accounts.api_keys():
        if key.key_id == key_id and (
            scope is None or (key.institution is not None and key.institution.code == scope)
        ):
            return key
    raise NotFound("API key not found")


def _roles_for(principal: Principal) -> list[str]:
    """The roles an admin may give: everything but platform admin, unless it is one."""
    return [r for r in ROLES if principal.all_institutions or r != PLATFORM_ADMIN]


def _institution_of_form(
    accounts: Accounts, principal: Principal, form: dict[str, str], role: str
) -> str | None:
    """The institution of a new account: the admin's own; for the platform admin the one
    chosen (none for a platform admin or key)."""
    if role not in ROLES:
        raise MalformedRequest(f"role: one of {', '.join(_roles_for(principal))}")
    if role == PLATFORM_ADMIN:
        if not principal.all_institutions:
            raise Forbidden("only the platform admin may create a platform admin")
        return None
    scope = _scope(principal)
    if scope is not None:
        return scope
    code = text_field(form, "institution", 64)
    if code is None:
        raise MalformedRequest("institution: choose the user's institution")
    try:
        accounts.institution(code)
    except NotFound:
        raise MalformedRequest(f"institution: there is no institution {code!r}") from None
    return code


# ----------------------------------------------------------------------------- rendering


def _user_row(user: UserInfo) -> dict[str, Any]:
    return {
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "institution": user.institution.code if user.institution else "",
        "institution_name": user.institution.name if user.institution else "",
        "disabled": user.disabled,
    }


def _key_row(key: ApiKeyInfo) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "role": key.role,
        "label": key.label,
        "institution": key.institution.code if key.institution else "",
        "created": key.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        "revoked": key.revoked_at.strftime("%Y-%m-%d %H:%M UTC") if key.revoked_at else "",
    }


def _users_page(
    request: Request,
    principal: Principal,
    *,
    error: str | None = None,
    form: dict[str, str] | None = None,
    created: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    accounts = accounts_for(request)
    scope = _scope(principal)
    context = {
        "users": [_user_row(u) for u in accounts.users(scope)],
        "roles": _roles_for(principal),
        "institutions": [] if scope is not None else accounts.institutions(),
        "platform": scope is None,
        "min_chars": MIN_PASSWORD_CHARS,
        "max_chars": MAX_PASSWORD_CHARS,
        "error": error,
        "form": {k: v for k, v in (form or {}).items() if k in _KEPT_FIELDS},
        "created": created,
    }
    response = render_staff(request, "staff_admin_users.html", context, status)
    if created is not None:
        response.headers.update(_NO_STORE)
    return response


def _user_page(
    request: Request,
    principal: Principal,
    user: UserInfo,
    *,
    error: str | None = None,
    done: str | None = None,
    password: str | None = None,
    status: int = 200,
) -> Response:
    context = {
        "user": _user_row(user),
        "roles": [r for r in _roles_for(principal) if r != PLATFORM_ADMIN],
        "is_self": principal.kind == "user" and principal.id == user.username,
        "min_chars": MIN_PASSWORD_CHARS,
        "max_chars": MAX_PASSWORD_CHARS,
        "error": error,
        "done": done,
        "password": password,
    }
    response = render_staff(request, "staff_admin_user.html", context, status)
    if password is not None:
        response.headers.update(_NO_STORE)
    return response


def _new_password(form: dict[str, str]) -> tuple[str, bool]:
    """The password of a create or reset form: generated (and to be shown once) when asked,
    else typed twice. Returns (password, generated)."""
    if form.get("password_mode", "type") == "generate":
        return secrets.token_urlsafe(GENERATED_BYTES), True
    password, again = form.get("password", ""), form.get("again", "")
    if password != again:
        raise MalformedRequest("the two passwords are not the same")
    check_password_rules(password)
    return password, False


# ---------------------------------------------------------------------------------- users


@admin_router.get("/users")
def users_page(request: Request, principal: PrincipalDep) -> Response:
    """The users an admin manages and the form that creates one."""
    audit_as(request, "admin-view", "users")
    require_admin(principal)
    return _users_page(request, principal)


@admin_router.post("/users")
async def create_user(request: Request, principal: PrincipalDep) -> Response:
    """Create a user; a generated password is shown on the answer, this once."""
    audit_as(request, "user-create")
    require_admin(principal)
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, "admin-user-create")
    _check_browser(principal)
    return await run_in_threadpool(_create_user, request, principal, form)


def _create_user(request: Request, principal: Principal, form: dict[str, str]) -> Response:
    accounts = accounts_for(request)
    username = form.get("username", "").strip()[:200]
    audit_as(request, "user-create", f"user {username[:64]}")
    try:
        role = form.get("role", "")
        institution = _institution_of_form(accounts, principal, form, role)
        password, generated = _new_password(form)
        display = text_field(form, "display_name", 200) or ""
        user = accounts.create_user(username, password, role, institution, display)
    except (MalformedRequest, Conflict) as exc:
        return _users_page(request, principal, error=exc.message, form=form, status=exc.status)
    created = {"username": user.username, "password": password if generated else None}
    return _users_page(request, principal, created=created)


@admin_router.get("/users/{username}")
def user_page(request: Request, username: str, principal: PrincipalDep) -> Response:
    """One user, and the forms that change them."""
    audit_as(request, "admin-view", f"user {username[:64]}")
    require_admin(principal)
    user = _managed_user(accounts_for(request), principal, username)
    return _user_page(request, principal, user)


async def _user_form(
    request: Request, principal: Principal, username: str, purpose: str
) -> tuple[Accounts, UserInfo, dict[str, str]]:
    audit_as(request, purpose.removeprefix("admin-"), f"user {username[:64]}")
    require_admin(principal)
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, purpose)
    _check_browser(principal)
    accounts = accounts_for(request)
    user = await run_in_threadpool(_managed_user, accounts, principal, username)
    _not_self(principal, user)
    return accounts, user, form


@admin_router.post("/users/{username}/disable")
async def disable_user(request: Request, username: str, principal: PrincipalDep) -> Response:
    """Disable a user: their sessions end and they cannot sign in."""
    accounts, user, _ = await _user_form(request, principal, username, "admin-user-disable")
    await run_in_threadpool(accounts.set_disabled, user.username, True)
    return _back_to(request, user)


@admin_router.post("/users/{username}/enable")
async def enable_user(request: Request, username: str, principal: PrincipalDep) -> Response:
    accounts, user, _ = await _user_form(request, principal, username, "admin-user-enable")
    await run_in_threadpool(accounts.set_disabled, user.username, False)
    return _back_to(request, user)


@admin_router.post("/users/{username}/role")
async def change_role(request: Request, username: str, principal: PrincipalDep) -> Response:
    accounts, user, form = await _user_form(request, principal, username, "admin-user-role")
    role = form.get("role", "")
    if role not in ROLES or role == PLATFORM_ADMIN:
        choices = ", ".join(r for r in ROLES if r != PLATFORM_ADMIN)
        raise MalformedRequest(f"role: one of {choices}")
    audit_as(request, "user-role", f"user {user.username} from {user.role} to {role}")
    await run_in_threadpool(accounts.set_role, user.username, role)
    return _back_to(request, user)


@admin_router.post("/users/{username}/password")
async def reset_password(request: Request, username: str, principal: PrincipalDep) -> Response:
    """Set a new password (typed twice, or generated and shown once); every session of the
    user ends."""
    accounts, user, form = await _user_form(
        request, principal, username, "admin-user-password-reset"
    )
    try:
        password, generated = _new_password(form)
    except MalformedRequest as exc:
        message = exc.message
        return await run_in_threadpool(
            lambda: _user_page(request, principal, user, error=message, status=400)
        )
    await run_in_threadpool(accounts.set_password, user.username, password)
    return await run_in_threadpool(
        lambda: _user_page(
            request, principal, user, done="password", password=password if generated else None
        )
    )


def _back_to(request: Request, user: UserInfo) -> Response:
    root = str(request.scope.get("root_path", ""))
    return RedirectResponse(f"{root}/staff/admin/users/{user.username}", status_code=303)


# ------------------------------------------------------------------------------- API keys


def _keys_page(
    request: Request,
    principal: Principal,
    *,
    error: str | None = None,
    created: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    accounts = accounts_for(request)
    scope = _scope(principal)
    keys = [
        k
        for k in accounts.api_keys()
        if scope is None or (k.institution is not None and k.institution.code == scope)
    ]
    context = {
        "keys": [_key_row(k) for k in reversed(keys)],  # newest first
        "roles": _roles_for(principal),
        "institutions": [] if scope is not None else accounts.institutions(),
        "platform": scope is None,
        "error": error,
        "created": created,
    }
    response = render_staff(request, "staff_admin_keys.html", context, status)
    if created is not None:
        response.headers.update(_NO_STORE)
    return response


@admin_router.get("/keys")
def keys_page(request: Request, principal: PrincipalDep) -> Response:
    audit_as(request, "admin-view", "API keys")
    require_admin(principal)
    return _keys_page(request, principal)


@admin_router.post("/keys")
async def create_key(request: Request, principal: PrincipalDep) -> Response:
    """Create an API key; the answer shows it, this once."""
    audit_as(request, "apikey-create")
    require_admin(principal)
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, "admin-apikey-create")
    _check_browser(principal)
    return await run_in_threadpool(_create_key, request, principal, form)


def _create_key(request: Request, principal: Principal, form: dict[str, str]) -> Response:
    accounts = accounts_for(request)
    try:
        role = form.get("role", "")
        institution = _institution_of_form(accounts, principal, form, role)
        label = text_field(form, "label", 200) or ""
        info, key = accounts.create_api_key(institution, role, label, principal.label)
    except MalformedRequest as exc:
        return _keys_page(request, principal, error=exc.message, status=exc.status)
    audit_as(request, "apikey-create", f"key {info.key_id} ({info.role})")
    return _keys_page(request, principal, created={"key_id": info.key_id, "key": key})


@admin_router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str, principal: PrincipalDep) -> Response:
    audit_as(request, "apikey-revoke", f"key {key_id[:16]}")
    require_admin(principal)
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, "admin-apikey-revoke")
    _check_browser(principal)
    accounts = accounts_for(request)
    key = await run_in_threadpool(_managed_key, accounts, principal, key_id)
    if key.revoked_at is None:
        await run_in_threadpool(accounts.revoke_api_key, key.key_id)
    root = str(request.scope.get("root_path", ""))
    return RedirectResponse(f"{root}/staff/admin/keys", status_code=303)


# --------------------------------------------------------------------------- institutions


def _require_platform(principal: Principal) -> None:
    require_admin(principal)
    if not principal.all_institutions:
        raise Forbidden("only the platform admin manages institutions")


def _institutions_page(
    request: Request, *, error: str | None = None, form: dict[str, str] | None = None,
    status: int = 200,
) -> Response:  # fmt: skip
    accounts = accounts_for(request)
    context = {
        "institutions": accounts.institutions(),
        "error": error,
        "form": {k: v for k, v in (form or {}).items() if k in ("code", "name")},
    }
    return render_staff(request, "staff_admin_institutions.html", context, status)


@admin_router.get("/institutions")
def institutions_page(request: Request, principal: PrincipalDep) -> Response:
    audit_as(request, "admin-view", "institutions")
    _require_platform(principal)
    return _institutions_page(request)


@admin_router.post("/institutions")
async def create_institution(request: Request, principal: PrincipalDep) -> Response:
    audit_as(request, "institution-create")
    _require_platform(principal)
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, "admin-institution-create")
    _check_browser(principal)
    code = form.get("code", "").strip()
    audit_as(request, "institution-create", f"institution {code[:64]}")

    def create() -> Response:
        try:
            name = text_field(form, "name", 400) or ""
            accounts_for(request).add_institution(code, name)
        except (MalformedRequest, Conflict) as exc:
            return _institutions_page(request, error=exc.message, form=form, status=exc.status)
        root = str(request.scope.get("root_path", ""))
        return RedirectResponse(f"{root}/staff/admin/institutions", status_code=303)

    return await run_in_threadpool(create)
