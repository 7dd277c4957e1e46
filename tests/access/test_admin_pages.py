"""The admin pages (users, API keys, institutions) through the FastAPI TestClient on a
production application: who may act on whom, passwords typed twice or generated once, keys
shown once, self lock-out refused, CSRF, the audit rows; and one run through the pages in
Chromium (create a user, sign out, sign in as them)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from share_support import ThreadServer

from cloudfilm.access.accounts import Accounts, utcnow
from cloudfilm.api.app import create_app
from cloudfilm.api.deps import STAFF_COOKIE
from cloudfilm.archive import Archive
from cloudfilm.audit import trail_for
from cloudfilm.audit.export import iter_rows

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

KEY = "test-production-secret-key-0123456789abcdef"
PASSWORD = "correct horse battery"
EN = {"Accept-Language": "en"}
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]  # fmt: skip


@pytest.fixture
def accounts(archive: Archive) -> Accounts:
    made = Accounts(archive, archive.settings.model_copy(update={"secret_key": KEY}))
    made.add_institution("hosp-a", "医院A")
    made.add_institution("hosp-b", "医院B")
    made.create_user("admin.a", PASSWORD, "admin", "hosp-a", "Admin A")
    made.create_user("tech.a", PASSWORD, "technologist", "hosp-a", "Tech A")
    made.create_user("admin.b", PASSWORD, "admin", "hosp-b")
    made.create_user("tech.b", PASSWORD, "technologist", "hosp-b")
    made.create_user("root", PASSWORD, "platform-admin", None)
    return made


@pytest.fixture
def app_client(archive: Archive, accounts: Accounts) -> Iterator[TestClient]:
    settings = archive.settings.model_copy(update={"env": "production", "secret_key": KEY})
    with TestClient(create_app(settings, archive), headers=EN) as client:
        yield client


@pytest.fixture
def as_user(app_client: TestClient, accounts: Accounts) -> Callable[[str], TestClient]:
    def sign(username: str) -> TestClient:
        app_client.cookies.clear()
        until = utcnow() + timedelta(hours=1)
        cookie = accounts.session_cookie(accounts.user(username), until)
        app_client.cookies.set(STAFF_COOKIE, cookie)
        return app_client

    return sign


def token(page_text: str, form_id: str | None = None, action: str | None = None) -> str:
    """The CSRF token of a form, found by its id or by its action."""
    where = rf'id="{form_id}"' if form_id else rf'action="{re.escape(action or "")}"'
    match = re.search(
        rf'<form[^>]*{where}[^>]*>\s*<input type="hidden" name="csrf_token" value="([^"]+)">',
        page_text,
    )
    assert match, f"no form {form_id or action} with a CSRF token"
    return match.group(1)


def post_form(
    client: TestClient, page: str, form_id: str, action: str, data: dict[str, str]
) -> httpx.Response:
    shown = client.get(page)
    assert shown.status_code == 200, shown.text
    body = {"csrf_token": token(shown.text, form_id), **data}
    return client.post(action, data=body, follow_redirects=False)


def create(client: TestClient, **data: str) -> httpx.Response:
    return post_form(client, "/staff/admin/users", "create-user-form", "/staff/admin/users", data)


def audit_rows(archive: Archive, action: str) -> list[dict[str, object]]:
    trail_for(archive).flush(timeout=10)
    return [r for r in iter_rows(archive.engine) if r["action"] == action]


# --------------------------------------------------------------------------------- users


def test_an_admin_lists_the_users_of_its_institution_only(
    as_user: Callable[[str], TestClient],
) -> None:
    page = as_user("admin.a").get("/staff/admin/users")
    assert page.status_code == 200
    names = re.findall(r'data-username="([^"]+)"', page.text)
    assert names == ["admin.a", "tech.a"]
    assert 'id="nav-admin"' in page.text and 'id="admin-nav-institutions"' not in page.text
    platform = as_user("root").get("/staff/admin/users")
    assert re.findall(r'data-username="([^"]+)"', platform.text) == [
        "admin.a", "admin.b", "root", "tech.a", "tech.b"
    ]  # fmt: skip
    assert 'id="admin-nav-institutions"' in platform.text


def test_the_admin_link_is_for_admins_only(as_user: Callable[[str], TestClient]) -> None:
    page = as_user("tech.a").get("/staff/")
    assert page.status_code == 200 and 'id="nav-admin"' not in page.text
    assert as_user("tech.a").get("/staff/admin/users").status_code == 403


def test_creating_a_user_with_a_typed_password(
    as_user: Callable[[str], TestClient], accounts: Accounts
) -> None:
    client = as_user("admin.a")
    typed = {"password": "a new long password", "again": "a new long password"}
    answer = create(client, username="li.rad", display_name="李医生", role="radiologist",
                    institution="hosp-b", **typed)  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert 'id="user-created"' in answer.text and 'id="generated-password"' not in answer.text
    user = accounts.user("li.rad")
    # an institution admin's users join its own institution, whatever the form says
    assert user.role == "radiologist" and user.institution and user.institution.code == "hosp-a"
    assert accounts.sign_in("li.rad", "a new long password", "127.0.0.1").user is not None


def test_a_generated_password_is_shown_once_and_works(
    as_user: Callable[[str], TestClient], accounts: Accounts, archive: Archive
) -> None:
    answer = create(as_user("admin.a"), username="gen.user", role="referring",
                    password_mode="generate")  # fmt: skip
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    found = re.search(r'<code id="generated-password">([^<]+)</code>', answer.text)
    assert found
    password = found.group(1)
    assert len(password) >= 20
    assert accounts.sign_in("gen.user", password, "127.0.0.1").user is not None
    assert "gen.user" in str(audit_rows(archive, "user-create")[-1]["detail"])
    trail = "\n".join(str(r) for r in iter_rows(archive.engine))
    assert password not in trail


@pytest.mark.parametrize(
    ("data", "status", "text"),
    [
        ({"password": "a new long password", "again": "another long password"}, 400,
         "not the same"),
        ({"password": "short", "again": "short"}, 400, "at least 10"),
        ({"username": "bad name!", "password": "a new long password",
          "again": "a new long password"}, 400, "a username is"),
        ({"username": "tech.b", "password": "a new long password",
          "again": "a new long password"}, 409, "exists already"),
        ({"role": "superuser", "password_mode": "generate"}, 400, "role: one of"),
        ({"display_name": "bad\x00name", "password_mode": "generate"}, 400, "control"),
    ],
)  # fmt: skip
def test_a_wrong_create_form_is_refused_and_shown_again(
    as_user: Callable[[str], TestClient], data: dict[str, str], status: int, text: str
) -> None:
    form = {"username": "new.user", "role": "radiologist", **data}
    answer = create(as_user("admin.a"), **form)
    assert answer.status_code == status, answer.text
    assert 'id="admin-error"' in answer.text and text in answer.text


def test_an_institution_admin_cannot_create_a_platform_admin(
    as_user: Callable[[str], TestClient], accounts: Accounts
) -> None:
    answer = create(as_user("admin.a"), username="evil", role="platform-admin",
                    password_mode="generate")  # fmt: skip
    assert answer.status_code == 403
    assert "evil" not in [u.username for u in accounts.users()]
    assert 'value="platform-admin"' not in as_user("admin.a").get("/staff/admin/users").text


def test_the_platform_admin_creates_users_anywhere_and_institutions(
    as_user: Callable[[str], TestClient], accounts: Accounts
) -> None:
    client = as_user("root")
    answer = create(client, username="b.rad", role="radiologist", institution="hosp-b",
                    password_mode="generate")  # fmt: skip
    assert answer.status_code == 200
    user = accounts.user("b.rad")
    assert user.institution and user.institution.code == "hosp-b"
    assert create(client, username="root2", role="platform-admin",
                  password_mode="generate").status_code == 200  # fmt: skip
    assert accounts.user("root2").institution is None
    missing = create(client, username="x.rad", role="radiologist", password_mode="generate")
    assert missing.status_code == 400 and "institution" in missing.text
    unknown = create(client, username="x.rad", role="radiologist", institution="nowhere",
                     password_mode="generate")  # fmt: skip
    assert unknown.status_code == 400
    added = post_form(client, "/staff/admin/institutions", "create-institution-form",
                      "/staff/admin/institutions", {"code": "hosp-c", "name": "医院C"})  # fmt: skip
    assert added.status_code == 303
    assert accounts.institution("hosp-c").name == "医院C"
    again = post_form(client, "/staff/admin/institutions", "create-institution-form",
                      "/staff/admin/institutions", {"code": "hosp-c"})  # fmt: skip
    assert again.status_code == 409
    bad = post_form(client, "/staff/admin/institutions", "create-institution-form",
                    "/staff/admin/institutions", {"code": "Hosp C!"})  # fmt: skip
    assert bad.status_code == 400
    assert as_user("admin.a").get("/staff/admin/institutions").status_code == 403


def _user_action(client: TestClient, username: str, form_id: str, action: str,
                 **data: str) -> httpx.Response:  # fmt: skip
    page = f"/staff/admin/users/{username}"
    return post_form(client, page, form_id, f"{page}/{action}", data)


def test_disable_ends_sessions_and_sign_in_and_enable_restores(
    as_user: Callable[[str], TestClient], accounts: Accounts, app_client: TestClient
) -> None:
    until = utcnow() + timedelta(hours=1)
    tech_cookie = accounts.session_cookie(accounts.user("tech.a"), until)
    answer = _user_action(as_user("admin.a"), "tech.a", "disable-form", "disable")
    assert answer.status_code == 303
    assert accounts.user("tech.a").disabled
    assert accounts.user_from_cookie(tech_cookie) is None
    assert accounts.sign_in("tech.a", PASSWORD, "127.0.0.1").error == "disabled"
    page = as_user("admin.a").get("/staff/admin/users/tech.a")
    assert 'id="enable-form"' in page.text
    assert _user_action(as_user("admin.a"), "tech.a", "enable-form", "enable").status_code == 303
    assert accounts.sign_in("tech.a", PASSWORD, "127.0.0.1").user is not None


def test_role_change_and_its_limits(
    as_user: Callable[[str], TestClient], accounts: Accounts, archive: Archive
) -> None:
    client = as_user("admin.a")
    answer = _user_action(client, "tech.a", "role-form", "role", role="radiologist")
    assert answer.status_code == 303
    assert accounts.user("tech.a").role == "radiologist"
    row = audit_rows(archive, "user-role")[-1]
    assert "from technologist to radiologist" in str(row["detail"])
    refused = _user_action(client, "tech.a", "role-form", "role", role="platform-admin")
    assert refused.status_code == 400
    root = _user_action(as_user("root"), "tech.a", "role-form", "role", role="platform-admin")
    assert root.status_code == 400
    assert accounts.user("tech.a").role == "radiologist"


def test_reset_password_typed_and_generated(
    as_user: Callable[[str], TestClient], accounts: Accounts
) -> None:
    until = utcnow() + timedelta(hours=1)
    old_cookie = accounts.session_cookie(accounts.user("tech.a"), until)
    typed = _user_action(as_user("admin.a"), "tech.a", "reset-form", "password",
                         password="reset by the admin", again="reset by the admin")  # fmt: skip
    assert typed.status_code == 200 and 'id="password-reset"' in typed.text
    assert accounts.user_from_cookie(old_cookie) is None
    assert accounts.sign_in("tech.a", "reset by the admin", "127.0.0.1").user is not None
    mismatch = _user_action(as_user("admin.a"), "tech.a", "reset-form", "password",
                            password="reset by the admin", again="something else!!")  # fmt: skip
    assert mismatch.status_code == 400
    generated = _user_action(as_user("admin.a"), "tech.a", "reset-form", "password",
                             password_mode="generate")  # fmt: skip
    text = generated.text
    found = re.search(r'<code id="generated-password">([^<]+)</code>', text)
    assert found and generated.headers["cache-control"] == "no-store"
    assert accounts.sign_in("tech.a", found.group(1), "127.0.0.1").user is not None


def test_an_admin_cannot_lock_itself_out(
    as_user: Callable[[str], TestClient], accounts: Accounts, app_client: TestClient
) -> None:
    client = as_user("admin.a")
    page = client.get("/staff/admin/users/admin.a")
    assert page.status_code == 200 and 'id="user-is-self"' in page.text
    assert 'id="disable-form"' not in page.text
    # a form made for another user, sent to one's own address
    other = client.get("/staff/admin/users/tech.a").text
    for action, form_id, data in (
        ("disable", "disable-form", {}),
        ("role", "role-form", {"role": "referring"}),
        ("password", "reset-form", {"password_mode": "generate"}),
    ):
        body = {"csrf_token": token(other, form_id), **data}
        answer = client.post(f"/staff/admin/users/admin.a/{action}", data=body,
                             follow_redirects=False)  # fmt: skip
        assert answer.status_code == 400, action
    user = accounts.user("admin.a")
    assert not user.disabled and user.role == "admin"
    assert accounts.sign_in("admin.a", PASSWORD, "127.0.0.1").user is not None


def test_another_institutions_users_and_keys_do_not_exist_for_an_admin(
    as_user: Callable[[str], TestClient], accounts: Accounts
) -> None:
    info, _ = accounts.create_api_key("hosp-a", "technologist", "RIS")
    client = as_user("admin.b")
    for name in ("tech.a", "root", "nobody", "x" * 300):
        assert client.get(f"/staff/admin/users/{name}").status_code == 404, name
    mine = client.get("/staff/admin/users/tech.b").text
    for action, form_id, data in (
        ("disable", "disable-form", {}),
        ("role", "role-form", {"role": "referring"}),
        ("password", "reset-form", {"password_mode": "generate"}),
    ):
        body = {"csrf_token": token(mine, form_id), **data}
        for name in ("tech.a", "root"):
            answer = client.post(f"/staff/admin/users/{name}/{action}", data=body)
            assert answer.status_code == 404, (name, action)
    assert info.key_id not in client.get("/staff/admin/keys").text
    # a valid revoke token of this browser, aimed at A's key
    answer = client.post(
        f"/staff/admin/keys/{info.key_id}/revoke", data={"csrf_token": _revoke_token(client)}
    )
    assert answer.status_code == 404
    assert accounts.active_api_key(info.key_id) is not None
    assert accounts.user("tech.a").role == "technologist" and not accounts.user("tech.a").disabled


def _revoke_token(client: TestClient) -> str:
    """A valid ``admin-apikey-revoke`` token of this browser (from a key of its own)."""
    page = post_form(client, "/staff/admin/keys", "create-key-form", "/staff/admin/keys",
                     {"role": "technologist", "label": "own"})  # fmt: skip
    text = page.text
    return token(text, action=re.search(r'action="(/staff/admin/keys/[0-9a-f]+/revoke)"',
                                        text).group(1))  # fmt: skip


def test_forms_without_csrf_are_refused(
    as_user: Callable[[str], TestClient], accounts: Accounts
) -> None:
    client = as_user("admin.a")
    client.get("/staff/admin/users")  # the CSRF cookie, but no token in the forms below
    for action, data in (
        ("/staff/admin/users", {"username": "x.y", "role": "referring"}),
        ("/staff/admin/users/tech.a/disable", {}),
        ("/staff/admin/keys", {"role": "technologist"}),
    ):
        answer = client.post(action, data={**data, "csrf_token": "forged"})
        assert answer.status_code == 403, action
    assert not accounts.user("tech.a").disabled
    assert "x.y" not in [u.username for u in accounts.users()]
    assert accounts.api_keys() == []


def test_api_keys_created_once_used_and_revoked(
    as_user: Callable[[str], TestClient], accounts: Accounts, archive: Archive
) -> None:
    client = as_user("admin.a")
    form = {"role": "technologist", "label": "RIS <b>x</b>", "institution": "hosp-b"}
    answer = post_form(client, "/staff/admin/keys", "create-key-form", "/staff/admin/keys", form)
    text = answer.text
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    key = re.search(r'<code id="new-key">(cfk_[^<]+)</code>', text)
    assert key and "RIS &lt;b&gt;x&lt;/b&gt;" in text
    (info,) = accounts.api_keys()
    assert info.institution and info.institution.code == "hosp-a" and info.label == "RIS <b>x</b>"
    listed = client.get("/staff/admin/keys").text
    assert info.key_id in listed and key.group(1) not in listed  # shown once
    client.cookies.clear()
    bearer = {"Authorization": f"Bearer {key.group(1)}"}
    assert client.get("/dicomweb/studies", headers=bearer).status_code == 200
    client = as_user("admin.a")
    page = client.get("/staff/admin/keys").text
    action = f"/staff/admin/keys/{info.key_id}/revoke"
    assert client.post(action, data={"csrf_token": token(page, action=action)},
                       follow_redirects=False).status_code == 303  # fmt: skip
    client.cookies.clear()
    assert client.get("/dicomweb/studies", headers=bearer).status_code == 401
    assert audit_rows(archive, "apikey-revoke")[-1]["outcome"] == "success"  # (flushed)
    trail = "\n".join(str(r) for r in iter_rows(archive.engine))
    secret = key.group(1)[len("cfk_") + 13 :]
    assert len(secret) == 43 and secret not in trail
    refused = post_form(as_user("admin.a"), "/staff/admin/keys", "create-key-form",
                        "/staff/admin/keys", {"role": "platform-admin"})  # fmt: skip
    assert refused.status_code == 403


def test_every_admin_action_is_audited(
    as_user: Callable[[str], TestClient], archive: Archive
) -> None:
    client = as_user("admin.a")
    create(client, username="aud.user", role="referring", password_mode="generate")
    _user_action(as_user("admin.a"), "aud.user", "disable-form", "disable")
    as_user("admin.b").get("/staff/admin/users/aud.user")
    rows = audit_rows(archive, "user-create") + audit_rows(archive, "user-disable")
    assert [(r["actor_id"], r["outcome"], r["institution"]) for r in rows] == [
        ("admin.a", "success", "hosp-a"), ("admin.a", "success", "hosp-a")
    ]  # fmt: skip
    assert all("aud.user" in str(r["detail"]) for r in rows)
    denied = [r for r in audit_rows(archive, "admin-view") if r["actor_id"] == "admin.b"]
    assert denied[-1]["outcome"] == "denied" and "aud.user" in str(denied[-1]["detail"])


def test_names_are_shown_as_text(as_user: Callable[[str], TestClient], accounts: Accounts) -> None:
    accounts.create_user("xss", PASSWORD, "referring", "hosp-a", "<script>alert(1)</script>")
    page = as_user("admin.a").get("/staff/admin/users")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


# ------------------------------------------------------------------------------- browser


@pytest.fixture
def live(archive: Archive, accounts: Accounts) -> Iterator[ThreadServer]:
    settings = archive.settings.model_copy(update={"env": "production", "secret_key": KEY})
    server = ThreadServer(create_app(settings, archive))
    yield server
    server.stop()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_an_admin_creates_a_user_who_then_signs_in(live: ThreadServer) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(locale="en-GB", extra_http_headers=EN)
            page.goto(f"{live.origin}/staff/signin")
            page.fill("#username", "admin.a")
            page.fill("#password", PASSWORD)
            page.click("#signin-submit")
            page.click("#nav-admin")
            assert page.url.endswith("/staff/admin/users")
            page.fill("#new-username", "wu.rad")
            page.fill("#new-display-name", "吴医生")
            page.select_option("#new-role", "radiologist")
            page.check("#new-generate")
            page.click("#create-user-submit")
            password = page.text_content("#generated-password") or ""
            assert len(password) >= 20
            assert page.locator("#user-wu\\.rad").count() == 1
            page.click("#signout")
            page.wait_for_url("**/staff/signin?out=1")
            page.fill("#username", "wu.rad")
            page.fill("#password", password)
            page.click("#signin-submit")
            page.wait_for_url("**/staff/")
            assert "吴医生" in (page.text_content("#staff-user") or "")
            assert page.locator("#nav-admin").count() == 0
        finally:
            browser.close()
