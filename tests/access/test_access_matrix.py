"""The access matrix: every route of the application, every kind of caller, the exact outcome.

The routes come from the application itself (``app.routes``, walked through included routers
and mounted applications, static files included), so a door added later is checked too: a
route without an entry in ``DOORS`` fails ``test_every_route_has_an_entry`` (which prints the
missing ``(method, template)``) and its own ``test_door``. How to add an entry:
docs/access.md, "The access matrix". The DIMSE part (C-FIND/C-MOVE/C-GET) is
tests/dimse/test_dimse_institutions.py.

One production application (no development principal) holds a study of hospital A and one
of hospital B; path parameters are A's study, series and instance (and share ids, tokens).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from matrix_support import MISSING, PRINCIPALS, SHARES, USERS_OF_A, World, build_world, walk_routes

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

#: Callers with no valid credentials on a route outside ``/s/{token}`` (a share's cookie is
#: only good under its link; a tampered staff cookie is no cookie).
ANONYMOUS = frozenset({"none", "staff-cookie-tampered", *SHARES})
#: Callers who do not see A's study (hospital B, B's link): they must get the answer of a
#: missing study on every door that names one.
OTHERS = frozenset({"user-b", "key-b"})
EVERYONE = frozenset(PRINCIPALS)
SIGNIN = "signin"  # a 303 redirect to /staff/signin

SEES_A = frozenset({*USERS_OF_A, "user-platform-admin", "key-a"})
#: Roles that manage cloud films (not ``referring``), with B's (for B's films).
SHARE_STAFF = frozenset(SEES_A - {"user-a-referring"})
#: Roles that store (admin, technologist; keys are technologists).
STORE_A = frozenset({"user-a-admin", "user-a-technologist", "user-platform-admin", "key-a"})
USERS = frozenset({*USERS_OF_A, "user-platform-admin", "user-b"})
#: Who manages A's users and keys.
ADMINS = frozenset({"user-a-admin", "user-platform-admin"})


@dataclass(frozen=True)
class Door:
    """The expected outcome of one (method, route template) for every caller.

    ``allowed`` callers get a 2xx/3xx, or one of ``ok`` (a 4xx about the request itself, see
    ``why``); everyone else gets exactly ``denied[caller]`` (a status, or ``SIGNIN``).
    """

    allowed: frozenset[str]
    denied: dict[str, int | str] = field(default_factory=dict)
    ok: frozenset[int] = frozenset()
    why: str = ""


def api(
    allowed: frozenset[str],
    *,
    others: int = 404,
    role: int = 403,
    anonymous: int | str = 401,
    ok: tuple[int, ...] = (),
    why: str = "",
) -> Door:
    """A door outside ``/s/{token}``: 401 without credentials, ``others`` for B's callers (404:
    A's study looks missing), ``role`` for A's callers whose role does not allow it."""
    denied: dict[str, int | str] = {}
    for caller in EVERYONE - allowed:
        if caller in ANONYMOUS:
            denied[caller] = anonymous
        elif caller in OTHERS:
            denied[caller] = others
        else:
            denied[caller] = role
    return Door(allowed, denied, frozenset(ok), why)


def link(
    allowed: frozenset[str] = frozenset({"share-a"}),
    *,
    other_link: int = 404,
    locked: int = 401,
    ok: tuple[int, ...] = (),
    why: str = "",
) -> Door:
    """A door under ``/s/{token}``: the token decides. A forged token 404, an expired or
    revoked link 410, the code not entered 401 (also for staff: their credentials do not open
    a link); B's link aimed at A's study ``other_link``."""
    denied: dict[str, int | str] = {}
    for caller in EVERYONE - allowed:
        denied[caller] = {
            "share-forged": 404,
            "share-expired": 410,
            "share-revoked": 410,
            "share-b": other_link,
        }.get(caller, locked)
    return Door(allowed, denied, frozenset(ok), why)


def public(ok: tuple[int, ...] = (), why: str = "") -> Door:
    return Door(EVERYONE, {}, frozenset(ok), why)


def staff_page(
    allowed: frozenset[str], *, others: int = 403, ok: tuple[int, ...] = (), why: str = ""
) -> Door:
    """A staff page GET: the anonymous are sent to sign in; a role without access 403."""
    return api(allowed, others=others, anonymous=SIGNIN, ok=ok, why=why)


VIEW_A = api(SEES_A)
#: DICOMweb searches: everyone signed in may search; B's callers find nothing of A (200 []).
SEARCH = api(SEES_A | OTHERS)
CATCH_ALL = api(SEES_A | OTHERS, ok=(404,), why="404: no such DICOMweb resource")
LINK_VIEW = link()
LINK_CATCH_ALL = link(frozenset({"share-a", "share-b"}), ok=(404,), why="no such resource")
CSRF = (403,)
#: A link never stores: 403 for a valid link, the link's own refusal otherwise.
NEVER_STORE = Door(frozenset(), {**link(frozenset()).denied, "share-a": 403, "share-b": 403})

DOORS: dict[tuple[str, str], Door] = {
    # service and documentation: no patient data
    ("GET", "/health"): public(),
    ("GET", "/metrics"): public(why="counters only, no patient data"),
    ("GET", "/openapi.json"): public(),
    ("GET", "/docs"): public(),
    ("GET", "/docs/oauth2-redirect"): public(),
    ("GET", "/redoc"): public(),
    ("GET", "/static/{path:path}"): public(),
    ("OPTIONS", "/wado"): public(why="CORS preflight"),
    ("OPTIONS", "/dicomweb/{path:path}"): public(why="CORS preflight"),
    ("OPTIONS", "/s/{token}/wado"): public(why="CORS preflight"),
    ("OPTIONS", "/s/{token}/dicomweb/{path:path}"): public(why="CORS preflight"),
    # sign-in pages
    ("GET", "/staff/signin"): public(),
    ("POST", "/staff/signin"): public(ok=CSRF, why="403: the form carries no CSRF token"),
    ("POST", "/staff/signout"): public(ok=CSRF, why="403: the form carries no CSRF token"),
    ("POST", "/oauth/token"): public(ok=(400, 401, 415),
                                     why="no form, no grant_type, or no client credentials"),
    ("GET", "/staff/password"): staff_page(USERS, why="users only: an API key has no password"),
    ("POST", "/staff/password"): api(USERS, others=403, ok=CSRF, why="403: no CSRF token"),
    # staff pages (B's staff get the same pages with B's studies and films)
    ("GET", "/staff/"): staff_page(SHARE_STAFF | OTHERS),
    ("GET", "/staff/issue"): staff_page(SHARE_STAFF | OTHERS),
    ("GET", "/staff/shares"): staff_page(SHARE_STAFF | OTHERS),
    ("GET", "/staff/studies/{study_uid}"): staff_page(SHARE_STAFF, others=404),
    # figures of film saved: counts, no patient data; staff see their own institution's
    ("GET", "/staff/figures"): staff_page(SHARE_STAFF | OTHERS),
    ("GET", "/api/figures"): api(SHARE_STAFF | OTHERS),
    ("GET", "/staff/{rest:path}"): staff_page(SHARE_STAFF | OTHERS, ok=(404,),
                                              why="404: no such staff page"),
    ("POST", "/staff/shares"): api(SHARE_STAFF | OTHERS, ok=CSRF, why="403: no CSRF token"),
    ("POST", "/staff/studies/{study_uid}/recognition"): api(
        EVERYONE - ANONYMOUS, ok=CSRF, why="403: no CSRF token (before the study is looked at)"
    ),
    ("POST", "/staff/studies/{study_uid}/film-prints"): api(
        SHARE_STAFF | OTHERS, ok=CSRF, why="403: no CSRF token (before the study is looked at)"
    ),
    ("POST", "/staff/shares/{share_id}/revoke"): api(
        SHARE_STAFF | OTHERS, ok=CSRF, why="403: no CSRF token (before the share is looked at)"
    ),
    # unmatched printed films (the film is A's: B's staff get 404, like a missing one)
    ("GET", "/staff/films/unmatched"): staff_page(SHARE_STAFF | OTHERS),
    ("GET", "/staff/films/unmatched/{film_id}.png"): staff_page(SHARE_STAFF, others=404),
    ("POST", "/staff/films/unmatched/{film_id}/attach"): api(
        SHARE_STAFF | OTHERS, ok=CSRF, why="403: no CSRF token (before the film is looked at)"
    ),
    ("GET", "/api/films/unmatched"): api(SHARE_STAFF | OTHERS),
    ("GET", "/api/films/unmatched/{film_id}.png"): api(SHARE_STAFF),
    ("POST", "/api/films/unmatched/{film_id}/attach"): api(SHARE_STAFF, ok=(400,),
                                                          why="400: no body"),
    # admin pages: an admin of B manages B's accounts (A's user is missing for it: 404);
    # forms are refused for lack of a CSRF token before anything is looked up
    ("GET", "/staff/admin/users"): staff_page(ADMINS | {"user-b"}),
    ("GET", "/staff/admin/keys"): staff_page(ADMINS | {"user-b"}),
    ("GET", "/staff/admin/users/{username}"): Door(
        ADMINS, {**staff_page(ADMINS).denied, "user-b": 404}
    ),
    ("GET", "/staff/admin/institutions"): staff_page(frozenset({"user-platform-admin"})),
    # the audit trail: admins see their institution's events (B's admin: B's)
    ("GET", "/staff/audit"): staff_page(ADMINS | {"user-b"}),
    ("GET", "/staff/audit/export"): staff_page(ADMINS | {"user-b"}),
    **{("POST", f"/staff/admin/{form}"): api(ADMINS | {"user-b"}, others=403, ok=CSRF,
                                             why="403: no CSRF token")
       for form in ("users", "users/{username}/disable", "users/{username}/enable",
                    "users/{username}/role", "users/{username}/password", "keys",
                    "keys/{key_id}/revoke")},
    ("POST", "/staff/admin/institutions"): api(frozenset({"user-platform-admin"}), others=403,
                                               ok=CSRF, why="403: no CSRF token"),
    # cloud films, staff API (a film of A is another institution's: 404 like a missing one)
    ("POST", "/api/shares"): api(SHARE_STAFF | OTHERS | {"user-a-referring"}, ok=(422,),
                                 why="422: empty body (validated before the role)"),
    ("GET", "/api/shares"): api(SHARE_STAFF | OTHERS),
    ("GET", "/api/shares/{share_id}"): api(SHARE_STAFF),
    ("GET", "/api/shares/{share_id}/card.{fmt}"): api(SHARE_STAFF),
    ("POST", "/api/shares/{share_id}/revoke"): api(SHARE_STAFF),
    ("POST", "/api/shares/{share_id}/renew"): api(SHARE_STAFF),
    # studies: REST
    ("GET", "/api/studies/{study_uid}/download.zip"): VIEW_A,
    ("GET", "/api/studies/{study_uid}/films"): VIEW_A,
    ("GET", "/api/studies/{study_uid}/films/{filename}"): api(
        SEES_A, ok=(404,), why="404: there is no film sheet of that name"
    ),
    ("POST", "/api/studies/{study_uid}/films"): api(STORE_A, ok=(400,), why="400: no body"),
    ("GET", "/api/studies/{study_uid}/film-prints"): VIEW_A,
    ("POST", "/api/studies/{study_uid}/film-prints"): api(
        STORE_A, ok=(400,), why="400: no film printer is configured"
    ),
    ("POST", "/api/studies/{study_uid}/reports"): api(STORE_A, ok=(400,), why="400: no body"),
    # patients across institutions: links, consent, recognition, sending on
    ("POST", "/api/pix/links"): api(STORE_A | OTHERS, ok=(400,), why="400: no body"),
    ("GET", "/api/pix/patients/{platform_id}"): api(
        STORE_A | OTHERS, others=403, ok=(404,), why="404: no such platform patient"
    ),
    ("POST", "/api/pix/patients/{platform_id}/merge"): api(
        frozenset({"user-platform-admin"}), others=403, ok=(400,), why="400: no body"
    ),
    ("POST", "/api/pix/split"): api(
        frozenset({"user-platform-admin"}), others=403, ok=(400,), why="400: no body"
    ),
    # the staff page of patient links: staff who store review their patients' links (B's
    # staff see B's); forms are refused for lack of a CSRF token before anything else
    ("GET", "/staff/patients"): staff_page(STORE_A | OTHERS),
    ("POST", "/staff/patients/link"): api(STORE_A | OTHERS, ok=CSRF, why="403: no CSRF token"),
    **{("POST", f"/staff/patients/{form}"): api(frozenset({"user-platform-admin"}), others=403,
                                                ok=CSRF, why="403: no CSRF token")
       for form in ("merge", "split")},
    ("GET", "/api/patients/exams"): VIEW_A,
    ("POST", "/api/consents"): api(SHARE_STAFF | OTHERS, ok=(400,), why="400: no body"),
    ("GET", "/api/studies/{study_uid}/consents"): api(SHARE_STAFF),
    ("POST", "/api/consents/{consent_id}/withdraw"): api(
        SHARE_STAFF | OTHERS, ok=(404,), why="404: no such consent"
    ),
    ("POST", "/api/studies/{study_uid}/recognition"): api(
        frozenset(USERS_OF_A), ok=(400,), why="400: no body; machines and the platform admin 403"
    ),
    ("GET", "/api/recognition/figures"): api(SHARE_STAFF | OTHERS),
    ("POST", "/api/studies/{study_uid}/send"): api(SEES_A, ok=(400,), why="400: no body"),
    ("GET", "/viewer/studies/{study_uid}"): VIEW_A,
    ("GET", "/iid"): VIEW_A,
    ("GET", "/wado"): VIEW_A,
    # DICOMweb
    ("POST", "/dicomweb/studies"): api(STORE_A | OTHERS, ok=(400,), why="400: no body"),
    ("POST", "/dicomweb/studies/{study}"): api(STORE_A | OTHERS, ok=(400,), why="400: no body"),
    ("GET", "/dicomweb/studies"): SEARCH,
    ("GET", "/dicomweb/series"): SEARCH,
    ("GET", "/dicomweb/instances"): SEARCH,
    ("GET", "/dicomweb/studies/{study}/series"): SEARCH,
    ("GET", "/dicomweb/studies/{study}/instances"): SEARCH,
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances"): SEARCH,
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path:path}"):
        api(SEES_A, ok=(404,), why="404: no bulk data at that path"),
    **{(m, "/dicomweb/{path:path}"): CATCH_ALL for m in ("GET", "POST", "PUT", "PATCH", "DELETE")},
    # the holder of a link
    ("GET", "/s/{token}"): link(EVERYONE - {"share-forged", "share-expired", "share-revoked"},
                                why="the page asks for the code when it is not entered"),
    ("POST", "/s/{token}/unlock"): link(
        EVERYONE - {"share-forged", "share-expired", "share-revoked"}, ok=(400,),
        why="400: the form has no code; B's link has none to enter (303)",
    ),
    ("POST", "/s/{token}/renew"): link(
        EVERYONE - {"share-forged", "share-expired", "share-revoked"},
        why="303 back to a link still valid; a wrong code renews nothing (410)",
    ),
    ("POST", "/s/{token}/reshares"): link(frozenset({"share-a", "share-b"})),
    ("POST", "/s/{token}/reshares/{share_id}/revoke"): link(),
    ("GET", "/s/{token}/consents"): link(frozenset({"share-a", "share-b"})),
    ("POST", "/s/{token}/consents"): link(frozenset({"share-a", "share-b"}), ok=(400,),
                                          why="400: the form names no period"),
    ("POST", "/s/{token}/consents/{consent_id}/confirm"): link(
        frozenset({"share-a", "share-b"}), ok=(404,), why="404: no such consent"
    ),
    ("POST", "/s/{token}/consents/{consent_id}/withdraw"): link(
        frozenset({"share-a", "share-b"}), ok=(400, 404), why="the patient has no consent"
    ),
    ("GET", "/s/{token}/api/share"): link(frozenset({"share-a", "share-b"})),
    ("GET", "/s/{token}/api/accesses"): link(frozenset({"share-a", "share-b"})),
    ("GET", "/s/{token}/api/reshares"): link(frozenset({"share-a", "share-b"})),
    ("POST", "/s/{token}/api/reshares"): link(frozenset({"share-a", "share-b"}), ok=(422,),
                                              why="422: empty body"),
    ("DELETE", "/s/{token}/api/reshares/{share_id}"): link(),
    ("GET", "/s/{token}/download.zip"): LINK_VIEW,
    ("GET", "/s/{token}/wado"): LINK_VIEW,
    ("POST", "/s/{token}/dicomweb/studies"): NEVER_STORE,
    ("POST", "/s/{token}/dicomweb/studies/{study}"): NEVER_STORE,
    **{(m, "/s/{token}/dicomweb/{path:path}"): LINK_CATCH_ALL
       for m in ("GET", "POST", "PUT", "PATCH", "DELETE")},
}  # fmt: skip

# Every WADO-RS and QIDO-RS door of a study, in both places (the user's and the link's).
for _suffix in (
    "", "/metadata", "/rendered", "/thumbnail", "/series/{series}", "/series/{series}/metadata",
    "/series/{series}/rendered", "/series/{series}/thumbnail",
    "/series/{series}/instances/{sop}", "/series/{series}/instances/{sop}/metadata",
    "/series/{series}/instances/{sop}/rendered", "/series/{series}/instances/{sop}/thumbnail",
    "/series/{series}/instances/{sop}/frames/{frame_list}",
    "/series/{series}/instances/{sop}/frames/{frame_list}/rendered",
    "/series/{series}/instances/{sop}/frames/{frame_list}/thumbnail",
):  # fmt: skip
    DOORS[("GET", f"/dicomweb/studies/{{study}}{_suffix}")] = VIEW_A
    DOORS[("GET", f"/s/{{token}}/dicomweb/studies/{{study}}{_suffix}")] = LINK_VIEW
_SEARCHES = ("/studies", "/series", "/instances", "/studies/{study}/series",
             "/studies/{study}/instances",
             "/studies/{study}/series/{series}/instances")  # fmt: skip
for _search in _SEARCHES:
    DOORS[("GET", f"/s/{{token}}/dicomweb{_search}")] = link(frozenset({"share-a", "share-b"}))
DOORS[
    (
        "GET",
        "/s/{token}/dicomweb/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path:path}",
    )
] = link(ok=(404,), why="404: no bulk data at that path")


def _routes() -> list[tuple[str, str]]:
    settings = Settings(data_dir=Path("/nonexistent"), env="production", secret_key="x" * 40)
    return list(walk_routes(create_app(settings)))


ROUTES = _routes()


def _backends() -> list[str]:
    url = os.environ.get("CLOUDFILM_DATABASE_URL", "")
    return ["sqlite", "postgresql"] if url.startswith("postgres") else ["sqlite"]


@pytest.fixture(scope="module", params=_backends())
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One application for every door (module scope: the doors do not change the world
    beyond idempotent revokes and new links)."""
    database_url = None
    schema = ""
    admin = None
    if request.param == "postgresql":
        import sqlalchemy as sa

        from cloudfilm.core.db import normalize_url

        base = os.environ["CLOUDFILM_DATABASE_URL"]
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(normalize_url(base), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        database_url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("matrix") / "data", database_url=database_url,
        min_free_bytes=0, storage="file",
    ).model_copy(update={"env": "production", "secret_key": "x" * 40})  # fmt: skip
    try:
        with Archive.open(settings) as archive, TestClient(create_app(settings, archive)) as client:
            yield build_world(archive, client, settings)
    finally:
        if admin is not None:
            import sqlalchemy as sa

            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def test_every_route_has_an_entry() -> None:
    missing = [route for route in ROUTES if route not in DOORS]
    stale = [route for route in DOORS if route not in ROUTES]
    assert not missing, "routes without an entry in DOORS (docs/access.md):\n" + "\n".join(
        f"    ({method!r}, {path!r})" for method, path in missing
    )
    assert not stale, f"entries of DOORS that are no route any more: {stale}"


def _outcome(status: int, location: str) -> int | str:
    if status == 303 and "/staff/signin" in location:
        return SIGNIN
    return status


def _same_answer(world: World, method: str, template: str, caller: str) -> None:
    """A study the caller may not see answers exactly like a missing one."""
    hidden = world.request(method, template, caller, world.study_a)
    missing = world.request(method, template, caller, MISSING)
    where = f"{method} {template} as {caller}"
    assert hidden.status_code == missing.status_code, where

    def text(answer: object, study: object) -> str:
        body = getattr(answer, "text", "")
        for name in ("study", "series", "sop"):
            body = body.replace(getattr(study, name), f"<{name}>")
        return re.sub(r'="[A-Za-z0-9_-]{32,}"', '="<random>"', str(body))  # CSRF, nonces

    if hidden.headers.get("content-type", "").startswith(("application/json", "text/")):
        assert text(hidden, world.study_a) == text(missing, MISSING), where


@pytest.mark.parametrize(("method", "template"), ROUTES, ids=[f"{m} {t}" for m, t in ROUTES])
def test_door(world: World, method: str, template: str) -> None:
    door = DOORS.get((method, template))
    assert door is not None, f"no entry in DOORS for ({method!r}, {template!r}): add one"
    wrong = []
    for caller in PRINCIPALS:
        answer = world.request(method, template, caller, world.study_a)
        got = _outcome(answer.status_code, answer.headers.get("location", ""))
        if caller in door.allowed:
            fine = isinstance(got, int) and (200 <= got < 400 or got in door.ok)
            expected: object = f"2xx/3xx{' or ' + str(sorted(door.ok)) if door.ok else ''}"
        else:
            fine = got == door.denied.get(caller)
            expected = door.denied.get(caller)
        if not fine:
            wrong.append(f"{caller}: got {got}, expected {expected}: {answer.text[:120]}")
    assert not wrong, f"{method} {template}\n  " + "\n  ".join(wrong)
    names_a_study = any(p in template for p in ("{study}", "{study_uid}", "/wado", "/iid")) or (
        template.endswith(("/download.zip", "/dicomweb/studies", "/dicomweb/series",
                           "/dicomweb/instances"))
    )  # fmt: skip
    if names_a_study and method == "GET":
        callers = ["share-b"] if template.startswith("/s/") else sorted(OTHERS)
        for caller in callers:
            _same_answer(world, method, template, caller)
