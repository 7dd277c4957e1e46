"""The staff pages over real HTTP (httpx against a live server): search, a study, issuing,
the list and revoking; CSRF refusals; names shown as text; hostile input gets a clean 4xx."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx
import pytest
from share_support import People, ThreadServer, store_study, token_of

from cloudfilm.archive import Archive
from cloudfilm.sharing.links import ShareFilter, ShareLinks, ShareRequest, ShareState

pytestmark = pytest.mark.db
EN = {"Accept-Language": "en-GB,en;q=0.9"}
CSRF = "csrf_token"


@pytest.fixture
def staff(origin: str) -> Iterator[httpx.Client]:
    """A staff member's browser: keeps cookies, reads English pages."""
    with httpx.Client(base_url=origin, headers=EN, timeout=30) as client:
        yield client


def csrf_of(page: httpx.Response, purpose_form: str = "issue-form") -> str:
    """The CSRF token of a form on the page (by the form's id or class)."""
    match = re.search(
        rf'<form[^>]*(?:id|class)="[^"]*{purpose_form}[^"]*"[^>]*>\s*'
        r'<input type="hidden" name="csrf_token" value="([^"]+)">',
        page.text,
    )
    assert match, f"no {purpose_form} with a CSRF token on {page.url}"
    return match.group(1)


def study_rows(page: httpx.Response) -> list[str]:
    return re.findall(r'<tr data-study-uid="([^"]+)">', page.text)


def share_ids(page: httpx.Response) -> list[str]:
    return re.findall(r'<tr id="share-([0-9a-f]{16})"', page.text)


def issue_form(study_uid: str, token: str, **fields: str) -> dict[str, str]:
    return {"csrf_token": token, "study_uid": study_uid, "expires": "1y",
            "protection": "code", **fields}  # fmt: skip


# ------------------------------------------------------------------------------ search


def test_search_by_name_id_accession_dates_and_modality(
    staff: httpx.Client, archive: Archive, people: People
) -> None:
    mr = store_study(archive, "PC-77", "ACC-C1", PatientName="Wang^Wu=王^五",
                     Modality="MR", StudyDate="20250615")  # fmt: skip
    everyone = {people.a1.study, people.a2.study, people.b1.study, mr.study}

    def found(**params: str) -> set[str]:
        page = staff.get("/staff/", params=params)
        assert page.status_code == 200, page.text
        return set(study_rows(page))

    assert found() == everyone  # no criteria: the newest studies
    assert found(name="张") == {people.a1.study, people.a2.study}
    assert found(name="李四") == {people.b1.study}
    assert found(name="wang") == {mr.study}  # pinyin, any case
    assert found(name="Li*") == {people.b1.study}
    assert found(patient_id="PB-990000") == {people.b1.study}
    assert found(accession="ACC-A2") == {people.a2.study}
    assert found(date_from="2026-01-01") == {people.a1.study, people.b1.study}
    assert found(date_to="2025-01-01") == {people.a2.study}
    assert found(date_from="2025-06-01", date_to="20250630") == {mr.study}
    assert found(modality="mr") == {mr.study}
    assert found(name="张", date_from="2026-11-01", date_to="2026-11-01") == {people.a1.study}
    assert found(name="赵") == set()
    page = staff.get("/staff/", params={"name": "赵"})
    assert 'id="no-results"' in page.text


def test_names_holding_script_are_shown_as_text(
    staff: httpx.Client, people: People, links: ShareLinks
) -> None:
    links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    for path in ("/staff/", f"/staff/studies/{people.a1.study}", "/staff/shares"):
        page = staff.get(path)
        assert page.status_code == 200
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path
        assert "<script>alert(1)" not in page.text, path
        assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_pages_in_chinese_and_english(origin: str, people: People) -> None:
    zh = httpx.get(f"{origin}/staff/", headers={"Accept-Language": "zh-CN"}, timeout=30)
    assert "<h1>查找检查</h1>" in zh.text and "张三" in zh.text
    en = httpx.get(f"{origin}/staff/studies/{people.b1.study}?lang=en", timeout=30)
    assert "Issue a cloud film" in en.text and "李四 (Li Si)" in en.text
    assert "cloudfilm_lang=en" in en.headers["set-cookie"]


# ------------------------------------------------------------------------ issue, revoke


def test_issue_shows_the_link_and_code_once_then_prints_the_card(
    staff: httpx.Client, people: People, links: ShareLinks
) -> None:
    study = staff.get(f"/staff/studies/{people.a1.study}")
    assert study.status_code == 200
    assert "CT chest A1" in study.text and 'id="no-shares"' in study.text
    cookie = study.headers["set-cookie"]
    assert "cloudfilm_staff_csrf=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Path=/staff" in cookie
    form = issue_form(people.a1.study, csrf_of(study), download="1", label="front desk")
    issued = staff.post("/staff/shares", data=form)
    assert issued.status_code == 201, issued.text
    link = re.search(r'id="issued-link" href="([^"]+)"', issued.text)
    code = re.search(r'id="issued-code">(\d{6})<', issued.text)
    assert link and code
    info = links.find(token_of(link.group(1)))
    assert info is not None and info.study_uids == (people.a1.study,)
    assert info.permissions == {"view", "download"} and info.label == "front desk"
    assert info.created_by == "development:dev"
    assert links.verify(info, code.group(1))
    assert 'src="data:image/svg+xml' in issued.text  # the QR code
    card = re.search(r'id="card-pdf" href="([^"]+)"', issued.text)
    assert card and card.group(1) == f"/api/shares/{info.id}/card.pdf"
    pdf = staff.get(card.group(1))
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
    png = staff.get(f"/api/shares/{info.id}/card.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    again = staff.get(f"/staff/studies/{people.a1.study}")
    assert share_ids(again) == [info.id]
    assert code.group(1) not in again.text and link.group(1) not in again.text  # shown once


def test_refused_form_comes_back_with_the_reason(
    staff: httpx.Client, archive: Archive, people: People, links: ShareLinks
) -> None:
    nameless = store_study(archive, "X1", "ACC-X1", PatientBirthDate=None)
    page = staff.get(f"/staff/studies/{nameless.study}")
    form = issue_form(nameless.study, csrf_of(page), protection="birth-date", label="标签")
    refused = staff.post("/staff/shares", data=form)
    assert refused.status_code == 400
    assert "holds no birth date" in refused.text and 'id="staff-error"' in refused.text
    assert 'value="标签"' in refused.text  # what was typed is kept
    form["check_answer"] = "1975-02-03"
    assert staff.post("/staff/shares", data=form).status_code == 201
    (info,) = links.list(ShareFilter(study_uid=nameless.study))
    assert info.secret_kind == "birth-date" and links.verify(info, "19750203")


def test_issue_by_accession_before_the_images_arrive(
    staff: httpx.Client, archive: Archive, links: ShareLinks
) -> None:
    page = staff.get("/staff/issue")
    assert page.status_code == 200 and 'name="accession_number"' in page.text
    form = {"csrf_token": csrf_of(page), "accession_number": "ACC-LATER", "expires": "90d",
            "protection": "code", "reshare": "1"}  # fmt: skip
    issued = staff.post("/staff/shares", data=form)
    assert issued.status_code == 201
    assert 'id="issued-pending"' in issued.text and "ACC-LATER" in issued.text
    assert 'id="card-pdf"' in issued.text  # the front desk prints the card at once
    listed = staff.get("/staff/shares", params={"accession": "ACC-LATER"})
    (share_id,) = share_ids(listed)
    assert "images on their way" in listed.text
    arrived = store_study(archive, "PL-1", "ACC-LATER", PatientName="Zhao^Liu=赵^六")
    study = staff.get(f"/staff/studies/{arrived.study}")
    assert share_ids(study) == [share_id]
    assert "images on their way" not in study.text
    assert links.get(share_id).study_uids == (arrived.study,)


def test_list_filters_and_revoke(staff: httpx.Client, people: People, links: ShareLinks) -> None:
    first = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    second = links.issue(ShareRequest(study_uids=[people.b1.study], secret="none"))
    links.revoke(second.info.id)
    everything = staff.get("/staff/shares")
    assert set(share_ids(everything)) == {first.info.id, second.info.id}
    active = staff.get("/staff/shares", params={"state": "active"})
    assert share_ids(active) == [first.info.id]
    by_patient = staff.get("/staff/shares", params={"patient_id": people.b1.patient_id})
    assert share_ids(by_patient) == [second.info.id]
    revoked = staff.post(
        f"/staff/shares/{first.info.id}/revoke",
        data={"csrf_token": csrf_of(active, "revoke-form"), "next": "/staff/shares?state=active"},
    )
    assert revoked.status_code == 303
    assert revoked.headers["location"] == "/staff/shares?state=active"
    assert links.get(first.info.id).state(first.info.created_at) is ShareState.REVOKED
    assert share_ids(staff.get("/staff/shares", params={"state": "active"})) == []


@pytest.mark.parametrize(
    "wanted", ["https://evil.example/staff/", "//evil.example/staff/", "/s/x", "/staff/../api",
               "javascript:alert(1)", "/staff/\\evil"],
)  # fmt: skip
def test_revoke_never_redirects_off_the_staff_pages(
    staff: httpx.Client, people: People, links: ShareLinks, wanted: str
) -> None:
    issued = links.issue(ShareRequest(study_uids=[people.a1.study]))
    page = staff.get("/staff/shares")
    answer = staff.post(
        f"/staff/shares/{issued.info.id}/revoke",
        data={"csrf_token": csrf_of(page, "revoke-form"), "next": wanted},
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/staff/shares"


# --------------------------------------------------------------------------------- CSRF


def test_forms_without_a_valid_csrf_token_are_refused(
    origin: str, staff: httpx.Client, people: People, links: ShareLinks
) -> None:
    page = staff.get(f"/staff/studies/{people.a1.study}")
    good = csrf_of(page)
    existing = links.issue(ShareRequest(study_uids=[people.b1.study]))
    listing = staff.get("/staff/shares")
    revoke_token = csrf_of(listing, "revoke-form")
    with httpx.Client(base_url=origin, headers=EN, timeout=30) as other:
        other.get("/staff/")  # another browser, with its own cookie
        attempts: list[tuple[httpx.Client, dict[str, str]]] = [
            (staff, issue_form(people.a1.study, "")),  # no token
            (staff, {k: v for k, v in issue_form(people.a1.study, "").items() if k != CSRF}),
            (staff, issue_form(people.a1.study, good[:-2] + "AA")),  # forged
            (staff, issue_form(people.a1.study, revoke_token)),  # another form's token
            (other, issue_form(people.a1.study, good)),  # another browser's token
        ]
        for client, form in attempts:
            refused = client.post("/staff/shares", data=form)
            assert refused.status_code == 403, form
            assert "text/html" in refused.headers["content-type"]
            assert "This form has expired" in refused.text
    bare = httpx.post(f"{origin}/staff/shares", data=issue_form(people.a1.study, good), timeout=30)
    assert bare.status_code == 403  # the token without its cookie (a cross-site POST)
    forged_revoke = staff.post(f"/staff/shares/{existing.info.id}/revoke", data={CSRF: good})
    assert forged_revoke.status_code == 403
    assert links.list(ShareFilter(study_uid=people.a1.study)) == []
    assert links.get(existing.info.id).revoked_at is None
    assert staff.post("/staff/shares", data=issue_form(people.a1.study, good)).status_code == 201


# ------------------------------------------------------------------ refusals, hostile input


def test_staff_pages_are_refused_to_non_staff(serve: Callable[..., ThreadServer]) -> None:
    """In production, a browser that is not signed in is sent to the sign-in page (signed-in
    users of other roles: tests/access/test_signin_pages.py)."""
    server = serve(env="production", secret_key="p" * 40)
    for path in ("/staff/", "/staff/shares", "/staff/issue", "/staff/studies/1.2.3"):
        refused = httpx.get(f"{server.origin}{path}", headers=EN, timeout=30)
        assert refused.status_code == 303, path
        assert refused.headers["location"] == f"/staff/signin?next={quote(path, safe='')}"
    form = {"study_uid": "1.2"}
    posted = httpx.post(f"{server.origin}/staff/shares", data=form, headers=EN, timeout=30)
    assert posted.status_code == 401
    assert "text/html" in posted.headers["content-type"]
    assert "Please sign in" in posted.text


HOSTILE_GETS = [
    ("/staff/?date_from=2024-13-45", 400),
    ("/staff/?date_from=2025-01-02&date_to=2024-01-01", 400),
    ("/staff/?date_to=yesterday", 400),
    ("/staff/?name=%00", 400),
    ("/staff/?name=a%0Ab", 400),
    ("/staff/?name=" + "x" * 5000, 400),
    ("/staff/?patient_id=" + "9" * 65, 400),
    ("/staff/?modality=CT%27%20OR%201%3D1", 400),
    ("/staff/?page=0", 400),
    ("/staff/?page=-1", 400),
    ("/staff/?page=99999999999999999999", 400),
    ("/staff/?page=%E4%B8%80", 400),
    ("/staff/?name=%25%5F%5C%27", 200),  # LIKE and SQL metacharacters are just text
    ("/staff/?name=%FF%FE", 200),
    ("/staff/studies/%3Cscript%3E", 400),
    ("/staff/studies/" + "1" * 65, 400),
    ("/staff/studies/1.2.3.4.5", 404),
    ("/staff/studies/..%2F..%2Fetc", 404),
    ("/staff/no/such/page", 404),
    ("/staff/shares?state=bogus", 400),
    ("/staff/shares?study_uid=..%2F..", 400),
    ("/staff/shares?page=abc", 400),
    ("/staff/shares?accession=%00", 400),
    ("/staff/shares?patient_id=" + quote("张" * 70), 400),
]


@pytest.mark.parametrize(("path", "status"), HOSTILE_GETS)
def test_hostile_parameters_get_a_clean_page(
    staff: httpx.Client, people: People, path: str, status: int
) -> None:
    answer = staff.get(path)
    assert answer.status_code == status, answer.text[:500]
    assert "text/html" in answer.headers["content-type"]
    if status != 200:
        assert 'id="staff-error"' in answer.text


def test_hostile_forms_get_a_clean_refusal(
    staff: httpx.Client, people: People, links: ShareLinks
) -> None:
    token = csrf_of(staff.get(f"/staff/studies/{people.a1.study}"))
    study = people.a1.study
    cases: list[tuple[dict[str, str], int]] = [
        (issue_form("<script>", token), 400),
        (issue_form("1.2.3.4.5.6", token), 404),
        (issue_form(study, token, expires="999y"), 400),
        (issue_form(study, token, expires_on="2020-01-01"), 400),
        (issue_form(study, token, expires_on="2024-02-30"), 400),
        (issue_form(study, token, expires_on="tomorrow"), 400),
        (issue_form(study, token, protection="root"), 400),
        (issue_form(study, token, label="a\x00b"), 400),
        (issue_form(study, token, note="x" * 1001), 400),
        (issue_form(study, token, check_answer="\x00"), 400),
        ({"csrf_token": token}, 400),
        ({"csrf_token": token, "accession_number": "A" * 65}, 400),
        (issue_form(study, token, accession_number=people.b1.accession), 400),  # B's exam
        (issue_form(study, token, label="长" * 3000), 413),  # 27 KB encoded
    ]
    for form, status in cases:
        answer = staff.post("/staff/shares", data=form)
        assert answer.status_code == status, (form, answer.text[:300])
        assert 'id="staff-error"' in answer.text
    as_json = staff.post("/staff/shares", json=issue_form(study, token))
    assert as_json.status_code == 415 and 'id="staff-error"' in as_json.text
    assert links.list(ShareFilter()) == []
    kept = links.issue(ShareRequest(study_uids=[study]))
    revoke_token = csrf_of(staff.get("/staff/shares"), "revoke-form")
    for share_id, status in (("zzz", 400), ("0" * 16, 404), ("%3Cb%3E", 400), ("A" * 16, 400)):
        answer = staff.post(f"/staff/shares/{share_id}/revoke", data={"csrf_token": revoke_token})
        assert answer.status_code == status, share_id
        assert 'id="staff-error"' in answer.text
    assert links.get(kept.info.id).revoked_at is None


def test_the_share_list_pages_by_fifty(
    staff: httpx.Client, people: People, links: ShareLinks
) -> None:
    made = [links.issue(ShareRequest(study_uids=[people.a1.study])).info.id for _ in range(51)]
    first = staff.get("/staff/shares")
    assert first.status_code == 200 and len(share_ids(first)) == 50
    assert 'rel="next"' in first.text and 'rel="prev"' not in first.text
    assert "Page 1" in first.text
    second = staff.get("/staff/shares", params={"page": "2"})
    assert second.status_code == 200 and 'rel="prev"' in second.text
    assert 'rel="next"' not in second.text
    assert set(share_ids(first)) | set(share_ids(second)) == set(made)
