"""Patients across hospitals: cross-references made at ingest, a patient's consent confirmed by
a one-time code, what hospital B then sees through every door, recognition records and their
figures, sending the exam to B's PACS, withdrawal — on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from platform_support import NATIONAL_ID, PHONE, Platform, other_ids
from sqlalchemy import select, text

from cloudfilm.access.accounts import utcnow
from cloudfilm.audit import trail_for
from cloudfilm.dimse import Peer, PeerDirectory
from cloudfilm.index.models import AuditEvent, DimseForward, PatientLink
from cloudfilm.patients import pix
from cloudfilm.patients.notify import outbox
from cloudfilm.sharing.links import ShareLinks, ShareRequest
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db


def qido(p: Platform, who: str, **params: str) -> set[str]:
    answer = p.as_(who).get("/dicomweb/studies", params=params)
    assert answer.status_code in (200, 204), answer.text
    return {s["0020000D"]["Value"][0] for s in (answer.json() if answer.status_code == 200 else [])}


def ask(p: Platform, **form: str) -> Any:
    client = p.as_("patient")
    values = {"institution": "hosp-b", "scope": "link", "days": "30", **form}
    return client.post(f"/s/{p.a_token}/consents", data=values, follow_redirects=False)


def code_sent(p: Platform) -> str:
    (message, *_older) = outbox(p.archive, PHONE)
    found = re.search(r"\b(\d{6})\b", message.text)
    assert found, message.text
    return found.group(1)


def consent_id(page: Any) -> str:
    found = re.search(r"/consents/([0-9a-f]{16})/confirm", page.text)
    assert found, page.text
    return found.group(1)


def give(p: Platform, **form: str) -> str:
    page = ask(p, **form)
    assert page.status_code == 201, page.text
    cid = consent_id(page)
    done = p.as_("patient").post(
        f"/s/{p.a_token}/consents/{cid}/confirm",
        data={"code": code_sent(p)},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    return cid


# ------------------------------------------------------------------------------ PIX


def test_a_strong_key_links_the_same_person_across_hospitals(platform: Platform) -> None:
    archive = platform.archive
    with archive.engine.connect() as conn:
        linked = {
            uid: pix.platform_patient_of_study(conn, uid)
            for uid in (platform.a_study, platform.b_study, platform.c_study, platform.stranger)
        }
        raw = " ".join(
            str(v) for row in conn.execute(text("SELECT * FROM platform_patient")) for v in row
        )
    assert linked[platform.a_study] == linked[platform.b_study] == linked[platform.c_study]
    assert linked[platform.a_study] is not None
    assert linked[platform.stranger] is None  # the same name is not enough
    assert NATIONAL_ID not in raw.upper() and PHONE not in raw  # kept as HMAC / sealed only
    with archive.engine.connect() as conn:
        sources = set(conn.execute(select(PatientLink.source)).scalars())
    assert sources == {"dicom"}


def test_feed_links_merge_and_split(platform: Platform) -> None:
    answer = platform.as_("a-tech").post(
        "/api/pix/links", json={"patient_id": "A-002", "issuer": "hosp-a", "phone": "138 0000 1111"}
    )
    assert answer.status_code == 200, answer.text
    stranger_id = answer.json()["id"]
    assert answer.json()["phone_hint"] == "1111" and not answer.json()["has_strong_key"]
    assert (
        platform.as_("b-doc")
        .post("/api/pix/links", json={"patient_id": "A-002", "issuer": "hosp-a"})
        .status_code
        == 403
    )  # a radiologist may not store
    assert platform.as_("c-doc").get(f"/api/pix/patients/{stranger_id}").status_code == 403
    bad = platform.as_("a-tech").post(
        "/api/pix/links", json={"patient_id": "A-002", "issuer": "hosp-a", "phone": "call me"}
    )
    assert bad.status_code == 400
    assert (
        platform.as_("a-tech")
        .post("/api/pix/links", json={"patient_id": "B-777", "issuer": "hosp-b"})
        .status_code
        == 404
    )  # B's patient: not A's to link
    with platform.archive.engine.connect() as conn:
        person = pix.platform_patient_of_study(conn, platform.a_study)
    assert person is not None
    person_id = pix.patient_info(platform.archive, _public(platform, person)).id
    assert (
        platform.as_("a-tech")
        .post(f"/api/pix/patients/{stranger_id}/merge", json={"into": person_id})
        .status_code
        == 403
    )
    admin = platform.as_("admin")
    merged = admin.post(f"/api/pix/patients/{stranger_id}/merge", json={"into": person_id})
    assert merged.status_code == 200, merged.text
    assert {link["patient_id"] for link in merged.json()["links"]} == {
        "A-001",
        "A-002",
        "B-777",
        "C-42",
    }
    split = admin.post("/api/pix/split", json={"patient_id": "A-002", "issuer": "hosp-a"})
    assert split.status_code == 200
    assert [link["patient_id"] for link in split.json()["links"]] == ["A-002"]
    shown = admin.get(f"/api/pix/patients/{person_id}").json()
    assert {link["patient_id"] for link in shown["links"]} == {"A-001", "B-777", "C-42"}
    assert {c for link in shown["links"] for c in link["institutions"]} == {
        "hosp-a",
        "hosp-b",
        "hosp-c",
    }


def _public(p: Platform, pk: int) -> str:
    from cloudfilm.patients.consent import platform_patient_id

    return platform_patient_id(p.archive, pk)


# ------------------------------------------------------------------------------ consent


def test_consent_opens_the_exam_to_b_and_withdrawal_closes_it(platform: Platform) -> None:
    p = platform
    viewer = f"/viewer/studies/{p.a_study}"
    assert p.as_("b-doc").get(viewer).status_code == 404
    assert qido(p, "b-doc") == {p.b_study}
    cid = give(p)
    assert "sent to" not in code_sent(p)
    # B sees A's exam through every door, and only that one (scope: this link's exam)
    assert qido(p, "b-doc") == {p.b_study, p.a_study}
    assert p.as_("b-doc").get(viewer).status_code == 200
    assert p.as_("b-doc").get(f"/staff/studies/{p.a_study}").status_code == 200
    exams = p.as_("b-doc").get(
        "/api/patients/exams", params={"patient_id": "B-777", "issuer": "hosp-b"}
    )
    assert exams.status_code == 200, exams.text
    listed = {e["study_uid"]: e for e in exams.json()["exams"]}
    assert set(listed) == {p.a_study, p.b_study}  # not C's: the consent covers A's exam only
    assert listed[p.a_study]["institution"] == "hosp-a" and not listed[p.a_study]["own"]
    assert listed[p.b_study]["own"]
    assert qido(p, "c-doc") == {p.c_study}  # C has no consent
    # B records that it accepts the exam instead of repeating it
    accepted = p.as_("b-doc").post(
        f"/api/studies/{p.a_study}/recognition",
        json={"accepted": True, "reason": "CT of last week"},
    )
    assert accepted.status_code == 201, accepted.text
    figures = {f["institution"]: f for f in p.as_("admin").get("/api/recognition/figures").json()}
    assert figures["hosp-b"]["exams_shared"] == 1
    assert figures["hosp-b"]["exams_accepted"] == figures["hosp-b"]["repeat_exams_avoided"] == 1
    assert figures["hosp-b"]["printed_films_saved"] == 1
    assert (
        figures["hosp-a"]["shared_by_others"] == 1 and figures["hosp-a"]["accepted_by_others"] == 1
    )
    own = p.as_("b-doc").get("/api/recognition/figures").json()
    assert [f["institution"] for f in own] == ["hosp-b"]
    page = p.as_("b-doc").get("/staff/figures", headers={"Accept-Language": "en"})
    assert page.status_code == 200
    row = re.search(r'<tr data-institution="hosp-b">(.*?)</tr>', page.text, re.S)
    assert row is not None and 'data-institution="hosp-a"' not in page.text
    assert re.findall(r'class="num">(\d+)<', row.group(1)) == ["1", "1", "1", "0", "1", "1", "0"]
    # the patient sees who opened the exam (from the audit trail), and withdraws
    trail_for(p.archive).flush()
    page = p.as_("patient").get(f"/s/{p.a_token}/consents", headers={"Accept-Language": "en"})
    assert "b-doc" in page.text and "乙医院" in page.text
    gone = p.as_("patient").post(f"/s/{p.a_token}/consents/{cid}/withdraw", follow_redirects=False)
    assert gone.status_code == 303
    assert p.as_("b-doc").get(viewer).status_code == 404
    assert qido(p, "b-doc") == {p.b_study}
    again = p.as_("patient").post(f"/s/{p.a_token}/consents/{cid}/withdraw")
    assert again.status_code == 409
    trail_for(p.archive).flush()
    with p.archive.sessions() as session:
        actions = set(
            session.execute(
                select(AuditEvent.action).where(AuditEvent.actor_kind == "share")
            ).scalars()
        )
    assert {"consent-request", "consent-give", "consent-withdraw"} <= actions


def test_all_exams_and_one_doctor(platform: Platform) -> None:
    p = platform
    give(p, scope="all", doctor="b-doc", days="7")
    assert qido(p, "b-doc") == {p.a_study, p.b_study, p.c_study}
    assert qido(p, "b-other") == {p.b_study}  # the consent names b-doc only
    assert p.as_("b-other").get(f"/viewer/studies/{p.c_study}").status_code == 404
    # a later exam of the same person at C is covered too
    later = make_dataset(
        PatientID="C-42", IssuerOfPatientID="hosp-c", OtherPatientIDsSequence=other_ids(NATIONAL_ID)
    )
    c = p.accounts.institution("hosp-c").pk
    assert p.archive.store(part10(later), institution=c).ok
    assert str(later.StudyInstanceUID) in qido(p, "b-doc")


def test_codes_wrong_lapsed_and_limits(platform: Platform) -> None:
    p = platform
    cid = consent_id(ask(p))
    right = code_sent(p)
    wrong = "000000" if right != "000000" else "111111"
    url = f"/s/{p.a_token}/consents/{cid}/confirm"
    for left in (4, 3, 2, 1):
        page = p.as_("patient").post(url, data={"code": wrong})
        assert page.status_code == 400 and f"{left} attempts left" in page.text
    assert p.as_("patient").post(url, data={"code": wrong}).status_code == 410
    assert p.as_("patient").post(url, data={"code": right}).status_code == 404  # dropped
    assert qido(p, "b-doc") == {p.b_study}
    # a bad period, institution or doctor name is refused on the page, nothing is sent
    before = len(outbox(p.archive))
    assert ask(p, days="3").status_code == 400
    assert ask(p, institution="nowhere").status_code == 400
    assert ask(p, doctor="x" * 65).status_code == 400
    assert len(outbox(p.archive)) == before
    # a code that lapsed
    lapsed = consent_id(ask(p))
    code = code_sent(p)
    with p.archive.engine.begin() as conn:
        conn.execute(
            text("UPDATE consent SET code_expires_at = :t WHERE id = :i"),
            {"t": utcnow() - timedelta(minutes=1), "i": lapsed},
        )
    answer = p.as_("patient").post(f"/s/{p.a_token}/consents/{lapsed}/confirm", data={"code": code})
    assert answer.status_code == 410


def test_without_a_phone_staff_record_the_consent(platform: Platform) -> None:
    p = platform
    with p.archive.engine.begin() as conn:
        conn.execute(text("UPDATE platform_patient SET phone_sealed = NULL"))
    page = ask(p)
    assert page.status_code == 403 and outbox(p.archive) == []
    body = {"study_uid": p.a_study, "institution": "hosp-b", "days": 30}
    assert p.as_("b-doc").post("/api/consents", json=body).status_code == 404  # not B's exam
    assert p.as_("a-tech").post("/api/consents", json={**body, "days": 0}).status_code == 400
    recorded = p.as_("a-tech").post("/api/consents", json=body)
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["confirmed_via"] == "user:a-tech"
    assert p.as_("b-doc").get(f"/viewer/studies/{p.a_study}").status_code == 200
    listed = p.as_("a-tech").get(f"/api/studies/{p.a_study}/consents").json()
    assert [c["state"] for c in listed] == ["active"]
    withdrawn = p.as_("a-tech").post(f"/api/consents/{recorded.json()['id']}/withdraw")
    assert withdrawn.status_code == 200
    assert p.as_("b-doc").get(f"/viewer/studies/{p.a_study}").status_code == 404


def test_a_doctors_link_cannot_consent(platform: Platform) -> None:
    p = platform
    links = ShareLinks(p.archive)
    info = links.find(p.a_token)
    assert info is not None
    child = links.reshare(
        info.id,
        ShareRequest(expires_at=utcnow() + timedelta(days=1), secret="none", permissions=("view",)),
        utcnow(),
    )
    answer = p.as_("patient").post(
        f"/s/{child.token}/consents", data={"institution": "hosp-b", "scope": "link", "days": "30"}
    )
    assert answer.status_code == 403
    assert outbox(p.archive) == []


def test_recognition_and_send_errors(platform: Platform) -> None:
    p = platform
    give(p)
    url = f"/api/studies/{p.a_study}/recognition"
    assert p.as_("b-doc").post(url, json={"accepted": False}).status_code == 400  # no reason
    assert p.as_("b-doc").post(url, json={"accepted": "maybe"}).status_code == 400
    assert p.as_("a-tech").post(url, json={"accepted": True}).status_code == 400  # its own
    assert p.as_("c-doc").post(url, json={"accepted": True}).status_code == 404  # not seen
    refused = p.as_("b-doc").post(url, json={"accepted": False, "reason": "slice too thick"})
    assert refused.status_code == 201
    figures = p.as_("b-doc").get("/api/recognition/figures").json()[0]
    assert (figures["exams_reviewed"], figures["exams_not_accepted"]) == (1, 1)
    assert (
        p.as_("b-doc").get("/api/recognition/figures", params={"since": "2026-13-01"}).status_code
        == 400
    )
    # send the exam to B's PACS: a peer of B only
    directory = PeerDirectory(p.archive)
    directory.add(Peer("PACS_B", "127.0.0.1", 11112, frozenset(), institution="hosp-b"))
    directory.add(Peer("PACS_C", "127.0.0.1", 11113, frozenset(), institution="hosp-c"))
    send = f"/api/studies/{p.a_study}/send"
    assert p.as_("b-doc").post(send, json={"peer": "PACS_C"}).status_code == 400
    assert p.as_("c-doc").post(send, json={"peer": "PACS_C"}).status_code == 404
    sent = p.as_("b-doc").post(send, json={"peer": "PACS_B"})
    assert sent.status_code == 202 and sent.json()["queued"] == 1
    with p.archive.sessions() as session:
        rows = session.execute(select(DimseForward.destination, DimseForward.study_uid)).all()
    assert rows == [("PACS_B", p.a_study)]


def test_a_consent_lets_b_see_never_change(platform: Platform) -> None:
    p = platform
    give(p)
    tech = p.as_("b-tech")
    assert tech.get(f"/viewer/studies/{p.a_study}").status_code == 200
    issued = tech.post("/api/shares", json={"study_uids": [p.a_study], "expires": "30d"})
    assert issued.status_code == 403
    film = {"layout": "1x1"}
    assert tech.post(f"/api/studies/{p.a_study}/films", json=film).status_code == 403
    report = tech.post(f"/api/studies/{p.a_study}/reports", json={"text": "mine"})
    assert report.status_code == 403
    assert tech.post(f"/api/studies/{p.b_study}/films", json=film).status_code == 201
    # nor widen the consent it was given: recording one in person is for A, which holds it
    wider = {"study_uid": p.a_study, "institution": "hosp-b", "days": 365}
    assert tech.post("/api/consents", json=wider).status_code == 403
    relink = {"patient_id": "A-001", "issuer": "hosp-a", "phone": "13900009999"}
    assert tech.post("/api/pix/links", json=relink).status_code == 404
    page = p.as_("b-doc").get(f"/staff/studies/{p.a_study}")
    assert page.status_code == 200
    assert 'id="recognition-form"' in page.text and 'id="share-table"' not in page.text
    own = p.as_("b-doc").get(f"/staff/studies/{p.b_study}")
    assert 'id="recognition-form"' not in own.text
