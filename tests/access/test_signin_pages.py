"""Staff sign-in, sign-out and password change over real HTTP (httpx against live servers in
production mode): the session cookie's attributes, one answer for a wrong name or password,
the lockout (also across two servers on one index), CSRF, open redirects, sessions ended by
a password change, the sign-in redirect of the staff pages, roles, escaping; and one run
through the forms in Chromium."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from share_support import ThreadServer

from cloudfilm.access.accounts import Accounts
from cloudfilm.api.deps import STAFF_COOKIE
from cloudfilm.archive import Archive

pytestmark = pytest.mark.db

#: A production server key (32 characters at least, not the development default).
KEY = "test-production-secret-key-0123456789abcdef"
PASSWORD = "correct horse battery"
NEW_PASSWORD = "a new password for 2026"
EN = {"Accept-Language": "en-GB,en;q=0.9"}
ZH = {"Accept-Language": "zh-CN,zh;q=0.9"}
WRONG_TEXT = "The username or password is not correct."

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]  # fmt: skip


@pytest.fixture
def accounts(archive: Archive) -> Accounts:
    made = Accounts(archive)
    made.add_institution("hosp-a", "医院A")
    made.create_user("wang.tech", PASSWORD, "technologist", "hosp-a", "王技师")
    made.create_user("dr.zhao", PASSWORD, "referring", "hosp-a", "赵医生")
    return made


@pytest.fixture
def production(serve: Callable[..., ThreadServer], accounts: Accounts) -> ThreadServer:
    return serve(env="production", secret_key=KEY)


def browser(server: ThreadServer, headers: dict[str, str] = EN) -> httpx.Client:
    """A browser of staff: keeps cookies, follows no redirect by itself."""
    return httpx.Client(base_url=server.origin, headers=headers, timeout=30)


@pytest.fixture
def staff(production: ThreadServer) -> Iterator[httpx.Client]:
    with browser(production) as client:
        yield client


def token_of(page: httpx.Response, form_id: str) -> str:
    """The CSRF token of the form with id ``form_id`` on the page."""
    match = re.search(
        rf'<form[^>]*id="{form_id}"[^>]*>\s*<input type="hidden" name="csrf_token" '
        r'value="([^"]+)">',
        page.text,
    )
    assert match, f"no {form_id} with a CSRF token on {page.url}"
    return match.group(1)


def sign_in(
    client: httpx.Client, username: str, password: str, next_: str | None = None
) -> httpx.Response:
    """Open the sign-in page (which gives the CSRF cookie) and send its form."""
    page = client.get("/staff/signin", params={"next": next_} if next_ is not None else None)
    assert page.status_code == 200, page.text
    form = {"csrf_token": token_of(page, "signin-form"), "username": username,
            "password": password}  # fmt: skip
    hidden = re.search(r'<input type="hidden" name="next" value="([^"]*)">', page.text)
    assert hidden is not None
    form["next"] = hidden.group(1).replace("&amp;", "&")
    return client.post("/staff/signin", data=form)


def set_cookie_of(response: httpx.Response, name: str) -> str:
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(found) == 1, response.headers.get_list("set-cookie")
    return found[0]


def sets_session(response: httpx.Response) -> bool:
    return any(h.startswith(f"{STAFF_COOKIE}=") for h in response.headers.get_list("set-cookie"))


# ----------------------------------------------------------------------------- sign-in


def test_sign_in_sets_a_strict_http_only_cookie_and_shows_the_user(
    staff: httpx.Client,
) -> None:
    answer = sign_in(staff, "wang.tech", PASSWORD, "/staff/shares?state=active")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/staff/shares?state=active"
    cookie = set_cookie_of(answer, STAFF_COOKIE).lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/;" in f"{cookie};"
    assert "secure" not in cookie  # plain http on loopback; https gets Secure
    assert "max-age" not in cookie and "expires" not in cookie  # ends with the browser
    page = staff.get("/staff/")
    assert page.status_code == 200
    assert 'id="staff-user"' in page.text and "王技师" in page.text and "医院A" in page.text
    assert token_of(page, "signout-form")


def test_sign_in_page_is_chinese_by_default(production: ThreadServer) -> None:
    with browser(production, headers={}) as client:
        page = client.get("/staff/signin")
    assert page.status_code == 200
    assert "工作人员登录" in page.text and 'lang="zh-CN"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "cloudfilm_staff_csrf=" in page.headers["set-cookie"]


def test_wrong_name_or_password_get_one_generic_answer(staff: httpx.Client) -> None:
    wrong_password = sign_in(staff, "wang.tech", "not the password")
    unknown_user = sign_in(staff, "nobody.here", "not the password")
    for answer in (wrong_password, unknown_user):
        assert answer.status_code == 401
        assert WRONG_TEXT in answer.text
        assert "4 attempts left" in answer.text
        assert not sets_session(answer)
    assert "wang.tech" not in unknown_user.text.replace('value="nobody.here"', "")


def test_a_disabled_account_is_refused(staff: httpx.Client, accounts: Accounts) -> None:
    accounts.set_disabled("wang.tech", True)
    answer = sign_in(staff, "wang.tech", PASSWORD)
    assert answer.status_code == 403 and "disabled" in answer.text
    assert WRONG_TEXT not in answer.text


def test_lockout_after_five_wrong_passwords_across_two_servers(
    serve: Callable[..., ThreadServer], accounts: Accounts
) -> None:
    first = serve(env="production", secret_key=KEY)
    second = serve(env="production", secret_key=KEY)
    with browser(first) as one, browser(second, ZH) as two:
        for attempt in range(4):
            client = (one, two)[attempt % 2]
            answer = sign_in(client, "wang.tech", f"wrong password {attempt}")
            assert answer.status_code == 401, attempt
        fifth = sign_in(one, "wang.tech", "wrong password 5")
        assert fifth.status_code == 429
        assert 0 < int(fifth.headers["retry-after"]) <= 15 * 60
        # Locked on the other server too, even with the right password; minutes in Chinese.
        locked = sign_in(two, "wang.tech", PASSWORD)
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 15 * 60
        assert re.search(r"请在 \d+ 分钟后再试", locked.text)
        assert not sets_session(locked)
        # Another user is not locked by this one's failures.
        assert sign_in(two, "dr.zhao", PASSWORD).status_code == 303


# -------------------------------------------------------------------------------- CSRF


def test_forms_without_a_valid_csrf_token_are_refused(staff: httpx.Client) -> None:
    form = {"username": "wang.tech", "password": PASSWORD}
    bare = staff.post("/staff/signin", data=form)  # no cookie, no token
    assert bare.status_code == 403 and not sets_session(bare)
    page = staff.get("/staff/signin")
    forged = staff.post("/staff/signin", data={**form, "csrf_token": "x" * 43})
    assert forged.status_code == 403
    assert "this form has expired" in forged.text
    # A token of the sign-in form is not one for signing out, and the reverse.
    assert sign_in(staff, "wang.tech", PASSWORD).status_code == 303
    signin_token = token_of(page, "signin-form")
    out = staff.post("/staff/signout", data={"csrf_token": signin_token})
    assert out.status_code == 403
    assert staff.get("/staff/").status_code == 200  # still signed in
    signout_token = token_of(staff.get("/staff/"), "signout-form")
    again = staff.post("/staff/signin", data={**form, "csrf_token": signout_token})
    assert again.status_code == 403
    change = {"old": PASSWORD, "new": NEW_PASSWORD, "again": NEW_PASSWORD}
    assert staff.post("/staff/password", data=change).status_code == 403


# -------------------------------------------------------------------------- redirects


@pytest.mark.parametrize(
    "wanted",
    [
        "https://evil.example",
        "//evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/staff/../..//evil.example",
        "javascript:alert(1)",
        "https://evil.example/staff/",
        "/staffevil",
        "/staff/\nSet-Cookie:x=1",
        "/staff/signin",
    ],
)
def test_open_redirects_go_to_the_staff_home(staff: httpx.Client, wanted: str) -> None:
    answer = sign_in(staff, "wang.tech", PASSWORD, wanted)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/staff/"


def test_local_pages_are_kept_as_next(staff: httpx.Client) -> None:
    for wanted in ("/staff/studies/1.2.3", "/viewer/studies/1.2.3?x=1"):
        answer = sign_in(staff, "wang.tech", PASSWORD, wanted)
        assert answer.headers["location"] == wanted


def test_staff_pages_send_a_browser_to_sign_in(staff: httpx.Client) -> None:
    answer = staff.get("/staff/")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/staff/signin?next=%2Fstaff%2F"
    deep = staff.get("/staff/shares", params={"state": "active"})
    assert deep.headers["location"] == "/staff/signin?next=%2Fstaff%2Fshares%3Fstate%3Dactive"
    assert staff.get("/staff/password").headers["location"].startswith("/staff/signin?next=")
    posted = staff.post("/staff/shares", data={"csrf_token": "x"})
    assert posted.status_code == 401 and 'id="signin-link"' in posted.text
    # The API still answers JSON 401 (no redirect for machines).
    assert staff.get("/api/shares").status_code == 401
    # Following the redirect and signing in comes back to the page.
    login = staff.get(answer.headers["location"])
    form = {"csrf_token": token_of(login, "signin-form"), "username": "wang.tech",
            "password": PASSWORD, "next": "/staff/shares?state=active"}  # fmt: skip
    back = staff.post("/staff/signin", data=form)
    assert back.headers["location"] == "/staff/shares?state=active"
    assert staff.get(back.headers["location"]).status_code == 200


def test_a_referring_doctor_may_not_manage_cloud_films(staff: httpx.Client) -> None:
    assert sign_in(staff, "dr.zhao", PASSWORD).status_code == 303
    for path in ("/staff/", "/staff/shares", "/staff/issue"):
        page = staff.get(path)
        assert page.status_code == 403, path
        assert "赵医生" in page.text and 'id="signout-form"' in page.text
    assert staff.get("/staff/password").status_code == 200  # their own password, though


def test_a_hostile_username_is_shown_as_text(staff: httpx.Client) -> None:
    answer = sign_in(staff, '"><script>alert(1)</script>', "whatever it is")
    assert answer.status_code == 401
    assert "<script>alert(1)" not in answer.text
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in answer.text


# ------------------------------------------------------------------- sign-out, password


def test_sign_out_clears_the_cookie(staff: httpx.Client) -> None:
    assert sign_in(staff, "wang.tech", PASSWORD).status_code == 303
    token = token_of(staff.get("/staff/"), "signout-form")
    out = staff.post("/staff/signout", data={"csrf_token": token})
    assert out.status_code == 303 and out.headers["location"] == "/staff/signin?out=1"
    cleared = set_cookie_of(out, STAFF_COOKIE).lower()
    assert "max-age=0" in cleared and "path=/;" in f"{cleared};"
    assert staff.get("/staff/").status_code == 303
    assert "You have signed out." in staff.get(out.headers["location"]).text


def test_password_change_ends_other_sessions_and_keeps_this_one(
    production: ThreadServer,
) -> None:
    with browser(production) as here, browser(production) as elsewhere:
        assert sign_in(here, "wang.tech", PASSWORD).status_code == 303
        assert sign_in(elsewhere, "wang.tech", PASSWORD).status_code == 303
        old_cookie = here.cookies[STAFF_COOKIE]
        page = here.get("/staff/password")
        assert page.status_code == 200
        token = token_of(page, "password-form")

        def change(old: str, new: str, again: str) -> httpx.Response:
            form = {"csrf_token": token, "old": old, "new": new, "again": again}
            return here.post("/staff/password", data=form)

        mismatch = change(PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x")
        assert mismatch.status_code == 400 and "not the same" in mismatch.text
        short = change(PASSWORD, "short", "short")
        assert short.status_code == 400 and "at least 10" in short.text
        wrong = change("not my password", NEW_PASSWORD, NEW_PASSWORD)
        assert wrong.status_code == 401 and "4 attempts left" in wrong.text  # counted
        done = change(PASSWORD, NEW_PASSWORD, NEW_PASSWORD)
        assert done.status_code == 200 and 'id="password-changed"' in done.text
        fresh = set_cookie_of(done, STAFF_COOKIE).lower()
        assert "httponly" in fresh and "samesite=strict" in fresh
        assert here.cookies[STAFF_COOKIE] != old_cookie
        assert here.get("/staff/").status_code == 200  # this browser stays signed in
        ended = elsewhere.get("/staff/")  # the other browser's session has ended
        assert ended.status_code == 303 and ended.headers["location"].startswith("/staff/signin")
        with browser(production) as thief:
            thief.cookies.set(STAFF_COOKIE, old_cookie)
            assert thief.get("/staff/").status_code == 303
        assert sign_in(elsewhere, "wang.tech", PASSWORD).status_code == 401
        assert sign_in(elsewhere, "wang.tech", NEW_PASSWORD).status_code == 303


def test_password_page_needs_an_account(serve: Callable[..., ThreadServer]) -> None:
    development = serve()  # no sign-in in development: there is no account to change
    with browser(development) as client:
        page = client.get("/staff/password")
    assert page.status_code == 403 and "staff account" in page.text


# ----------------------------------------------------------------------------- browser


def test_sign_in_and_out_in_chromium(production: ThreadServer) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    origin = production.origin
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = chromium.new_context(locale="zh-CN")
            page = context.new_page()
            page.goto(f"{origin}/staff/shares")
            page.wait_for_url("**/staff/signin?next=*")
            assert page.locator("h1").inner_text() == "工作人员登录"
            page.fill("#username", "wang.tech")
            page.fill("#password", "not the password")
            page.click("#signin-submit")
            assert page.locator("#signin-error").inner_text() == "用户名或密码不正确。"
            page.fill("#password", PASSWORD)
            page.click("#signin-submit")
            page.wait_for_url(f"{origin}/staff/shares")
            page.click("#nav-search")
            page.wait_for_url(f"{origin}/staff/")
            assert page.locator("h1").inner_text() == "查找检查"
            assert "王技师" in page.locator("#staff-user").inner_text()
            assert page.locator("#staff-institution").inner_text() == "医院A"
            cookie = next(c for c in context.cookies() if c["name"] == STAFF_COOKIE)
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie").find(STAFF_COOKIE) == -1
            page.click("#signout")
            page.wait_for_url("**/staff/signin?out=1")
            assert page.locator("#signin-signed-out").inner_text() == "您已退出登录。"
            assert not [c for c in context.cookies() if c["name"] == STAFF_COOKIE]
            page.goto(f"{origin}/staff/")
            page.wait_for_url("**/staff/signin?next=*")
        finally:
            chromium.close()
