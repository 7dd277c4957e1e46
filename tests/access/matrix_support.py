"""The world of the access matrix: hospitals A and B, their people and machines, share links.

``build_world`` stores one study of each hospital on a production application and makes one
principal of every kind; ``Caller.request`` makes one request as that principal; ``walk_routes``
lists every route of the application, mounted applications and static files included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Mount

from cloudfilm.access.accounts import Accounts, utcnow
from cloudfilm.access.roles import ROLES
from cloudfilm.api.deps import STAFF_COOKIE
from cloudfilm.archive import Archive
from cloudfilm.sharing.links import ShareLinks, ShareRequest
from support.instances import make_dataset, part10

#: Every kind of caller of the matrix, in the order the failures are printed.
USERS_OF_A = tuple(f"user-a-{role}" for role in ROLES if role != "platform-admin")
PRINCIPALS = (
    "none",
    *USERS_OF_A,
    "user-platform-admin",
    "user-b",
    "key-a",
    "key-b",
    "share-a",
    "share-b",
    "share-locked",
    "share-expired",
    "share-revoked",
    "share-forged",
    "staff-cookie-tampered",
)
#: Routes that take an HTML form (sent one with a wrong answer and no CSRF token).
FORM_ROUTES = {
    "/s/{token}/unlock", "/s/{token}/renew", "/s/{token}/reshares",
    "/s/{token}/reshares/{share_id}/revoke", "/staff/signin", "/staff/signout",
    "/staff/password", "/staff/shares", "/staff/shares/{share_id}/revoke",
    "/staff/studies/{study_uid}/film-prints", "/staff/studies/{study_uid}/recognition",
    "/s/{token}/consents",
    "/s/{token}/consents/{consent_id}/confirm", "/s/{token}/consents/{consent_id}/withdraw",
    "/staff/films/unmatched/{film_id}/attach",
    "/staff/admin/users", "/staff/admin/users/{username}/disable",
    "/staff/admin/users/{username}/enable", "/staff/admin/users/{username}/role",
    "/staff/admin/users/{username}/password", "/staff/admin/keys",
    "/staff/admin/keys/{key_id}/revoke", "/staff/admin/institutions",
    "/staff/patients/link", "/staff/patients/merge", "/staff/patients/split",
}  # fmt: skip
FORM_BODY = {"answer": "000000", "username": "nobody", "password": "wrong password"}
#: The share callers (their token fills ``{token}``; others use A's locked link's token).
SHARES = tuple(p for p in PRINCIPALS if p.startswith("share-"))


def walk_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """Every (method, path template) the application answers, through included routers
    (FastAPI keeps them as branches with ``effective_candidates``) and mounted applications
    (a mount with routes is walked; one without, such as static files, is one ``GET`` door
    ``<mount>/{path:path}``)."""

    def walk(routes: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
        for route in routes:
            if hasattr(route, "effective_candidates"):
                yield from walk(route.effective_candidates(), prefix)
                yield from walk(route.effective_low_priority_routes(), prefix)
                continue
            if isinstance(route, Mount):
                inner = getattr(route.app, "routes", None)
                if inner:
                    yield from walk(list(inner), prefix + route.path)
                else:
                    yield "GET", f"{prefix}{route.path}/{{path:path}}"
                continue
            path = getattr(route, "path", None)
            original = getattr(route, "original_route", route)
            methods = getattr(original, "methods", None) or getattr(route, "methods", None)
            if path:
                for method in sorted(methods or {"GET"}):
                    if method != "HEAD":  # answered as GET by Starlette
                        yield method, prefix + path

    yield from sorted(set(walk(list(app.routes), "")))


@dataclass
class Study:
    study: str
    series: str
    sop: str


#: A study, series and instance that do not exist (a hidden study must answer like these).
MISSING = Study("1.2.826.0.1.999.1", "1.2.826.0.1.999.2", "1.2.826.0.1.999.3")


@dataclass
class World:
    """The application and every caller."""

    client: TestClient
    study_a: Study
    study_b: Study
    #: A share of A's study staff routes act on (``{share_id}`` under ``/api`` and ``/staff``).
    target_share: str
    #: A reshare made from ``share-a`` (``{share_id}`` under ``/s/{token}``).
    child_share: str
    tokens: dict[str, str]
    headers: dict[str, dict[str, str]]
    cookies: dict[str, dict[str, str]]
    film: str = ""
    #: An unmatched printed film of hospital A (``{film_id}``).
    printed: str = ""
    notes: list[str] = field(default_factory=list)
    #: Another share of A's study, the one the staff routes that revoke act on: the doors run
    #: in any order (test workers take them as they come), and the others need theirs active.
    revoke_share: str = ""

    def path(self, template: str, caller: str, study: Study) -> str:
        token = self.tokens.get(caller, self.tokens["share-locked"])
        if template.startswith("/static/"):
            template = template.replace("{path:path}", "base.css")
        share_id = self.child_share if template.startswith("/s/") else self.target_share
        if template.endswith("/{share_id}/revoke") and not template.startswith("/s/"):
            share_id = self.revoke_share
        values = {
            "token": token, "study": study.study, "study_uid": study.study,
            "series": study.series, "sop": study.sop, "frame_list": "1", "share_id": share_id,
            "fmt": "png", "filename": self.film or "none.png", "rest": "nowhere",
            "path": "nowhere", "consent_id": "0123456789abcdef",
            "platform_id": "0123456789abcdef", "film_id": self.printed,
            "username": "user-a-radiologist",
            "key_id": self.headers["key-a"]["Authorization"].split("_")[1],
        }  # fmt: skip

        def one(match: re.Match[str]) -> str:
            name = match.group(1).split(":")[0]
            assert name in values, f"no test value for path parameter {name} in {template}"
            return values[name]

        return re.sub(r"\{([^}]+)\}", one, template)

    def request(self, method: str, template: str, caller: str, study: Study) -> httpx.Response:
        url = self.path(template, caller, study)
        params: dict[str, str] = {}
        if url.endswith("/wado"):
            params = {"requestType": "WADO", "studyUID": study.study, "seriesUID": study.series,
                      "objectUID": study.sop, "contentType": "application/dicom"}  # fmt: skip
        elif url.endswith("/iid"):
            params = {"requestType": "STUDY", "studyUID": study.study}
        elif url.endswith(("/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances")):
            params = {"StudyInstanceUID": study.study}
        elif url.endswith("/download.zip"):
            params = {"study": study.study}
        elif url.endswith("/api/patients/exams"):
            params = {"patient_id": "PA-MATRIX"}
        form = None
        if method == "POST" and template in FORM_ROUTES:
            # (no code for /unlock: a wrong one would count towards the link's lockout)
            form = {"next": "/"} if template.endswith("/unlock") else FORM_BODY
        headers = {"Accept": "*/*", **self.headers.get(caller, {})}
        self.client.cookies.clear()
        for name, value in self.cookies.get(caller, {}).items():
            self.client.cookies.set(name, value)
        return self.client.request(
            method, url, params=params, headers=headers, data=form, follow_redirects=False
        )


def build_world(archive: Archive, client: TestClient, settings: Any) -> World:
    accounts = Accounts(archive, settings)
    links = ShareLinks(archive, settings)
    a = accounts.add_institution("hosp-a").pk
    b = accounts.add_institution("hosp-b").pk
    studies = []
    for pk, pid in ((a, "PA-MATRIX"), (b, "PB-MATRIX")):
        ds = make_dataset(PatientID=pid, PatientName="Matrix^Test", PatientBirthDate="19800101")
        assert archive.store(part10(ds), institution=pk).ok
        studies.append(Study(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                             str(ds.SOPInstanceUID)))  # fmt: skip
    study_a, study_b = studies
    password = "a long enough password"
    until = utcnow() + timedelta(hours=2)
    cookies: dict[str, dict[str, str]] = {}
    headers: dict[str, dict[str, str]] = {}
    for role in ROLES:
        name = "user-platform-admin" if role == "platform-admin" else f"user-a-{role}"
        institution = None if role == "platform-admin" else "hosp-a"
        user = accounts.create_user(name, password, role, institution)
        cookies[name] = {STAFF_COOKIE: accounts.session_cookie(user, until)}
    user_b = accounts.create_user("user-b", password, "admin", "hosp-b")
    cookies["user-b"] = {STAFF_COOKIE: accounts.session_cookie(user_b, until)}
    good = cookies["user-a-admin"][STAFF_COOKIE]
    cookies["staff-cookie-tampered"] = {
        STAFF_COOKIE: good[:-2] + ("00" if good[-2:] != "00" else "11")
    }
    for name, code in (("key-a", "hosp-a"), ("key-b", "hosp-b")):
        _, key = accounts.create_api_key(code, "technologist")
        headers[name] = {"Authorization": f"Bearer {key}"}

    everything = ["view", "download", "reshare"]
    now = utcnow()

    def issue(study: str, secret: str = "none", when: Any = None, **extra: Any) -> Any:
        request = ShareRequest(study_uids=[study], secret=secret, permissions=everything, **extra)
        return links.issue(request, when or now)

    def token(issued: Any) -> str:
        return str(issued.token)

    share_a = issue(study_a.study, "code")
    tokens = {"share-a": token(share_a), "share-b": token(issue(study_b.study))}
    tokens["share-locked"] = token(issue(study_a.study, "code"))
    expired = issue(study_a.study, when=now - timedelta(days=3), expires_at=now - timedelta(days=1))
    tokens["share-expired"] = token(expired)
    revoked = issue(study_a.study)
    links.revoke(revoked.info.id)
    tokens["share-revoked"] = token(revoked)
    tokens["share-forged"] = "A" * 22
    target = issue(study_a.study)
    unlocked = client.post(f"/s/{tokens['share-a']}/unlock", data={"answer": share_a.code},
                           follow_redirects=False)  # fmt: skip
    assert unlocked.status_code in (200, 303), unlocked.text
    session = {name: value for name, value in client.cookies.items()}
    assert session, "the unlock set no session cookie"
    cookies["share-a"] = session
    client.cookies.clear()
    child = links.reshare(share_a.info.id, ShareRequest(permissions=["view"]), now)
    world = World(client, study_a, study_b, target.info.id, child.info.id, tokens, headers, cookies)
    world.revoke_share = issue(study_a.study).info.id
    world.printed = str(_unmatched_film(archive, "hosp-a"))
    return world


def _unmatched_film(archive: Archive, institution: str) -> int:
    """A sheet printed by an AE of ``institution`` that sent nothing: an unmatched film."""
    import numpy as np

    from cloudfilm.film.compose import CellImage, SheetStyle, compose_sheet
    from cloudfilm.film.layout import Orientation, parse_display_format, parse_film_size
    from cloudfilm.film.printed import PrintedSheet, keep_printed

    pixels = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    sheet = compose_sheet(
        [CellImage(pixels)], parse_display_format("STANDARD\\1,1"), parse_film_size("8INX10IN"),
        Orientation.PORTRAIT, style=SheetStyle(dpi=40, annotate=False),
    )  # fmt: skip
    kept = keep_printed(archive, PrintedSheet(sheet, "MATRIXCT", institution=institution))
    assert kept.unmatched_id is not None
    return kept.unmatched_id
