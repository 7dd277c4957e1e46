"""The staff API (/api/shares) and the holder API (/s/{token}/api) over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests
from share_support import People, ThreadServer, token_of, unlock
from sqlalchemy import delete, select

from cloudfilm.audit import trail_for
from cloudfilm.index.models import AuditEvent, ShareAccess
from cloudfilm.sharing.links import ShareFilter, ShareLinks, ShareRequest, utcnow

pytestmark = pytest.mark.db


def create(origin: str, **body: object) -> requests.Response:
    return requests.post(f"{origin}/api/shares", json=body, timeout=30)


def test_staff_issue_list_get_revoke_renew(origin: str, people: People) -> None:
    made = create(origin, study_uids=[people.a1.study], code=True, expires="30d",
                  permissions=["download", "reshare"], label="CT card")  # fmt: skip
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["link"].startswith("http://127.0.0.1:8080/s/") and len(token_of(body["link"])) == 22
    assert len(body["code"]) == 6 and body["protection"] == "code"
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(days=29, hours=23) < expires - utcnow() <= timedelta(days=30)
    assert body["permissions"] == ["download", "reshare", "view"]
    assert body["created_by"] == "development:dev" and body["state"] == "active"
    share_id = body["id"]
    got = requests.get(f"{origin}/api/shares/{share_id}", timeout=30).json()
    assert "code" not in got and "link" not in got  # secrets only when asked for, by staff
    revealed = requests.get(f"{origin}/api/shares/{share_id}?reveal=true", timeout=30).json()
    assert (revealed["link"], revealed["code"]) == (body["link"], body["code"])
    create(origin, study_uids=[people.b1.study])
    listed = requests.get(f"{origin}/api/shares", params={"study_uid": people.a1.study},
                          timeout=30).json()  # fmt: skip
    assert [s["id"] for s in listed] == [share_id]
    assert len(requests.get(f"{origin}/api/shares", timeout=30).json()) == 2
    renewed = requests.post(f"{origin}/api/shares/{share_id}/renew", json={"expires": "2y"},
                            timeout=30).json()  # fmt: skip
    assert datetime.fromisoformat(renewed["expires_at"]) - utcnow() > timedelta(days=729)
    revoked = requests.post(f"{origin}/api/shares/{share_id}/revoke", timeout=30)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    again = requests.post(f"{origin}/api/shares/{share_id}/renew", timeout=30)
    assert again.status_code == 409
    only_revoked = requests.get(f"{origin}/api/shares?state=revoked", timeout=30).json()
    assert [s["id"] for s in only_revoked] == [share_id]


def test_staff_issue_by_accession_and_patient_check(origin: str, people: People) -> None:
    pending = create(origin, accession_number="ACC-NOT-YET", patient_check="birth-date",
                     check_answer="2001-02-03")  # fmt: skip
    assert pending.status_code == 201 and pending.json()["pending"] is True
    assert pending.json()["code"] is None
    known = create(origin, accession_number="ACC-A2", patient_check="id-suffix")
    assert known.json()["study_uids"] == [people.a2.study]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"study_uids": ["1.2.3"], "code": True, "patient_check": "birth-date"}, 422),
        ({"study_uids": ["1.2.3"], "colour": "red"}, 422),
        ({"study_uids": ["not a uid!"]}, 422),
        ({"study_uids": ["1" * 65]}, 422),
        ({"study_uids": ["1.2.3"] * 101}, 422),
        ({"study_uids": ["1.2.3"], "permissions": ["delete"]}, 422),
        ({"study_uids": ["1.2.3"], "label": "x" * 201}, 422),
        ({"study_uids": ["1.2.3"], "expires": "x" * 41}, 422),
        ({"study_uids": "1.2.3"}, 422),
        ({"study_uids": ["1.2.3.4.5.6.404"]}, 404),
        ({"study_uids": ["1.2.3"], "expires": "tomorrow"}, 400),
        ({"study_uids": ["1.2.3"], "expires": "999999y"}, 400),
        ({"study_uids": ["1.2.3"], "not_before": "2030-01-01T00:00:00"}, 400),
        ({"study_uids": ["1.2.3"], "not_before": "2026-01-01T00:00:00"}, 404),
        ({"accession_number": "ACC-X", "patient_check": "id-suffix"}, 400),
        ({"accession_number": "ACC-X", "patient_check": "id-suffix", "check_answer": "!!"}, 400),
    ],
)
def test_staff_api_refuses_bad_bodies(
    origin: str, people: People, body: dict[str, object], status: int
) -> None:
    answer = create(origin, **body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")


def test_staff_api_other_refusals(origin: str, people: People) -> None:
    two = create(origin, study_uids=[people.a1.study, people.b1.study])
    assert two.status_code == 400 and "one patient" in two.json()["detail"]
    assert requests.get(f"{origin}/api/shares/nothex", timeout=30).status_code == 422
    assert requests.get(f"{origin}/api/shares/0123456789abcdef", timeout=30).status_code == 404
    assert requests.get(f"{origin}/api/shares?limit=0", timeout=30).status_code == 422
    assert requests.get(f"{origin}/api/shares?limit=10000", timeout=30).status_code == 422
    assert requests.get(f"{origin}/api/shares?state=lost", timeout=30).status_code == 422
    raw = requests.post(f"{origin}/api/shares", data=b"{not json", timeout=30,
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert raw.status_code == 422
    # NUL characters: PostgreSQL cannot store or compare them; a 400, not a 500
    for field in ("label", "note", "accession_number"):
        nul = create(origin, study_uids=[people.a1.study], **{field: "a\x00b"})
        assert nul.status_code == 400 and "NUL" in nul.json()["detail"], field
    for name in ("patient_id", "accession_number"):
        listed = requests.get(f"{origin}/api/shares", params={name: "a\x00"}, timeout=30)
        assert listed.status_code == 400, name


def test_staff_api_is_refused_to_share_links_and_in_production(
    serve: Callable[..., ThreadServer], people: People, links: ShareLinks
) -> None:
    production = serve(env="production", secret_key="p" * 40)
    refused = create(production.origin, study_uids=[people.a1.study])
    assert refused.status_code == 401  # no credential (users and API keys: tests/access)
    # a share link in production still works (its own principal), with the production key
    prod_links = ShareLinks(links.archive, production.server.config.app.state.settings)
    issued = prod_links.issue(ShareRequest(study_uids=[people.a1.study]))
    page = requests.get(f"{production.origin}/s/{token_of(issued.link)}/api/share", timeout=30)
    assert page.status_code == 200 and page.json()["id"] == issued.info.id


def test_holder_accesses_and_reshares(origin: str, people: People, links: ShareLinks) -> None:
    issued = links.issue(
        ShareRequest(study_uids=[people.a1.study], secret="code", permissions=["reshare"])
    )
    token = token_of(issued.link)
    assert requests.get(f"{origin}/s/{token}/api/accesses", timeout=30).status_code == 401
    patient = requests.Session()
    patient.headers["User-Agent"] = "Mozilla/5.0 (Linux; Android 14) MicroMessenger/8.0"
    unlock(patient, origin, token, issued.code or "")
    base = f"{origin}/s/{token}/api"
    made = patient.post(f"{base}/reshares", json={"label": "Dr Wang", "expires": "400d",
                                                   "code": True}, timeout=30)  # fmt: skip
    assert made.status_code == 201, made.text
    child = made.json()
    assert child["expires_at"] == patient.get(f"{base}/share", timeout=30).json()["expires_at"]
    assert child["parent_id"] == issued.info.id and len(child["code"]) == 6
    bad = patient.post(f"{base}/reshares", json={"permissions": ["reshare"]}, timeout=30)
    assert bad.status_code == 422
    short = patient.post(f"{base}/reshares", json={"expires": "30m"}, timeout=30)
    assert short.status_code == 400
    assert [r["id"] for r in patient.get(f"{base}/reshares", timeout=30).json()] == [child["id"]]
    doctor = requests.Session()
    child_token = token_of(child["link"])
    assert unlock(doctor, origin, child_token, child["code"]).status_code == 303
    # the doctor's link cannot reshare, nor list the patient's accesses
    assert doctor.get(f"{origin}/s/{child_token}/api/reshares", timeout=30).status_code == 403
    own = doctor.get(f"{origin}/s/{child_token}/api/accesses", timeout=30).json()["accesses"]
    assert {a["share_id"] for a in own} == {child["id"]}
    seen = patient.get(f"{base}/accesses", timeout=30).json()["accesses"]
    assert [(a["action"], a["share_id"], a["reshare"]) for a in seen] == [
        ("open", child["id"], True), ("open", issued.info.id, False),
    ]  # fmt: skip
    assert seen[1]["client"] == "127.0.0.0/24" and "MicroMessenger" in seen[1]["user_agent"]
    assert seen[0]["label"] == "Dr Wang"
    page = patient.get(f"{origin}/s/{token}", headers={"Accept-Language": "en"}, timeout=30)
    assert page.status_code == 200
    gone = patient.delete(f"{base}/reshares/{child['id']}", timeout=30)
    assert gone.status_code == 200 and gone.json()["state"] == "revoked"
    assert doctor.get(f"{origin}/s/{child_token}", timeout=30).status_code == 410
    stranger = links.issue(ShareRequest(study_uids=[people.b1.study], permissions=["reshare"]))
    other_child = links.reshare(stranger.info.id, ShareRequest())
    foreign = patient.delete(f"{base}/reshares/{other_child.info.id}", timeout=30)
    assert foreign.status_code == 404  # only links made from this one


def test_accesses_are_read_from_the_audit_trail(
    origin: str, people: People, links: ShareLinks
) -> None:
    """Each opening and download is one audit row of the share, and the list is those rows."""
    issued = links.issue(
        ShareRequest(study_uids=[people.a1.study], secret="code", permissions=["download"])
    )
    token = token_of(issued.link)
    patient = requests.Session()
    patient.headers["User-Agent"] = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Safari/604.1"
    assert unlock(patient, origin, token, issued.code or "").status_code == 303
    zipped = patient.get(f"{origin}/s/{token}/download.zip", timeout=60)
    assert zipped.status_code == 200
    study = patient.get(
        f"{origin}/s/{token}/dicomweb/studies/{people.a1.study}",
        headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=60,
    )  # fmt: skip
    assert study.status_code == 200
    archive = links.archive
    rows: list[Any] = []
    for _ in range(100):  # the middleware records a request just after its answer is sent
        trail_for(archive).flush(timeout=10)
        with archive.sessions() as session:
            rows = list(
                session.execute(
                    select(AuditEvent.action, AuditEvent.detail, AuditEvent.address)
                    .where(AuditEvent.actor_kind == "share")
                    .where(AuditEvent.actor_id == issued.info.id)
                    .order_by(AuditEvent.seq)
                )
            )
        if len(rows) >= 3:
            break
        time.sleep(0.1)
    # the list does not come from share_access (kept for the film figures only)
    with archive.sessions.begin() as writing:
        writing.execute(delete(ShareAccess).where(ShareAccess.share_id == issued.info.id))
    downloads = [r for r in rows if r.action == "download"]
    assert [r.action for r in rows if r.action == "share-open"] == ["share-open"]
    # one row per request: the ZIP and the WADO-RS study retrieve, each named a download
    assert len(downloads) == 2 and "download.zip" in downloads[0].detail
    assert "/dicomweb/studies/{study}" in downloads[1].detail
    assert not [r for r in rows if r.action == "retrieve"]
    assert {r.address for r in rows} == {"127.0.0.1"}  # the trail keeps the whole address
    seen = patient.get(f"{origin}/s/{token}/api/accesses", timeout=30).json()["accesses"]
    assert [a["action"] for a in seen] == ["download", "download", "open"]
    assert {a["client"] for a in seen} == {"127.0.0.0/24"}  # the patient sees the network
    assert all("iPhone" in a["user_agent"] for a in seen)


def test_reshare_form_and_panel(origin: str, people: People, links: ShareLinks) -> None:
    """The page's forms (no script): make a link for a doctor, see it once, withdraw it."""
    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code",
                                      permissions=["reshare", "download"]))  # fmt: skip
    token = token_of(issued.link)
    patient = requests.Session()
    patient.headers["Accept-Language"] = "en"
    unlock(patient, origin, token, issued.code or "")
    made = patient.post(f"{origin}/s/{token}/reshares", timeout=30, allow_redirects=False,
                        data={"label": "Dr <b>Li</b>", "expires": "1d", "code": "1"})  # fmt: skip
    assert made.status_code == 201 and "Link for the doctor" in made.text
    assert 'src="data:image/svg+xml' in made.text and 'id="reshare-code"' in made.text
    (child,) = links.list(ShareFilter(parent_id=issued.info.id))
    assert child.label == "Dr <b>Li</b>" and child.secret_kind == "code"
    assert child.expires_at - utcnow() <= timedelta(days=1)
    withdrawn = patient.post(f"{origin}/s/{token}/reshares/{child.id}/revoke", timeout=30,
                             allow_redirects=False)  # fmt: skip
    assert withdrawn.status_code == 303
    assert links.get(child.id).revoked_at is not None
    stranger = requests.post(f"{origin}/s/{token}/reshares", data={"label": "x"}, timeout=30)
    assert stranger.status_code == 401 and 'name="answer"' in stranger.text


def test_staff_card_of_a_share(origin: str, people: People) -> None:
    import io

    import zxingcpp
    from PIL import Image
    from pypdf import PdfReader

    made = create(origin, study_uids=[people.a1.study], code=True).json()
    pdf = requests.get(f"{origin}/api/shares/{made['id']}/card.pdf", timeout=60)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert "no-store" in pdf.headers["cache-control"]
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert made["code"] in text and "CT chest A1" in text
    png = requests.get(f"{origin}/api/shares/{made['id']}/card.png", timeout=60)
    decoded = zxingcpp.read_barcodes(Image.open(io.BytesIO(png.content)))
    assert [d.text for d in decoded] == [made["link"]]
    assert requests.get(f"{origin}/api/shares/{made['id']}/card.gif", timeout=30).status_code == 422
    requests.post(f"{origin}/api/shares/{made['id']}/revoke", timeout=30)
    assert requests.get(f"{origin}/api/shares/{made['id']}/card.pdf", timeout=30).status_code == 410


def test_holder_sees_no_staff_details_and_the_door_is_not_cached(
    origin: str, people: People, links: ShareLinks
) -> None:
    issued = links.issue(ShareRequest(
        study_uids=[people.a1.study], secret="code", permissions=["reshare"],
        note="internal: patient asked twice", created_by="user:nurse7",
    ))  # fmt: skip
    token = token_of(issued.link)
    patient = requests.Session()
    unlock(patient, origin, token, issued.code or "")
    seen = patient.get(f"{origin}/s/{token}/api/share", timeout=30)
    body = seen.json()
    assert body["id"] == issued.info.id and body["study_uids"] == [people.a1.study]
    assert not {"note", "created_by", "patient_id"} & set(body)
    for path in ("/api/share", "", f"/dicomweb/studies/{people.a1.study}/metadata",
                 f"/dicomweb/studies/{people.a1.study}/series/{people.a1.series}/instances/"
                 f"{people.a1.sop}/rendered"):  # fmt: skip
        answer = patient.get(f"{origin}/s/{token}{path}", timeout=30)
        assert answer.status_code == 200, (path, answer.status_code)
        assert answer.headers["cache-control"] == "no-store", path
        assert answer.headers["referrer-policy"] == "no-referrer", path
        assert answer.headers["x-content-type-options"] == "nosniff", path
    staff = requests.get(f"{origin}/dicomweb/studies/{people.a1.study}/metadata", timeout=30)
    assert staff.headers["cache-control"] != "no-store"  # the staff door keeps its caching
    # a reshare with the earlier exams: the API wants a code, the page form sets one
    refused = patient.post(f"{origin}/s/{token}/api/reshares",
                           json={"include_prior": True}, timeout=30)  # fmt: skip
    assert refused.status_code == 400 and "access code" in refused.json()["detail"]
    made = patient.post(f"{origin}/s/{token}/reshares", data={"include_prior": "1"},
                        timeout=30, allow_redirects=False)  # fmt: skip
    assert made.status_code == 201
    (child,) = links.list(ShareFilter(parent_id=issued.info.id))
    assert child.secret_kind == "code" and people.a2.study in child.study_uids
