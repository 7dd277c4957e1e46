"""The staff page of patient links (/staff/patients): review, correct, merge and split, with
who may do what, refusals that change nothing, and an audit row for each change."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from platform_support import SECRET, Platform
from sqlalchemy import select

from cloudfilm.audit import trail_for
from cloudfilm.index.models import AuditEvent
from cloudfilm.patients import pix
from cloudfilm.sharing.csrf import CSRF_COOKIE, CsrfKeys

pytestmark = pytest.mark.db


def signed_in(p: Platform, who: str, language: str = "en") -> TestClient:
    client = p.as_(who)
    client.headers["Accept-Language"] = language
    return client


def csrf(page: Any, purpose_form: str) -> str:
    """The CSRF token of the form whose action ends in ``purpose_form``."""
    found = re.search(
        rf'action="[^"]*/staff/patients/{purpose_form}"[^>]*>\s*'
        r'<input type="hidden" name="csrf_token" value="([^"]+)">',
        page.text,
    )
    assert found, f"no {purpose_form} form on the page"
    return found.group(1)


def post(client: TestClient, form: str, page: Any, **values: str) -> Any:
    data = {"csrf_token": csrf(page, form), **values}
    return client.post(f"/staff/patients/{form}", data=data, follow_redirects=False)


def audit(p: Platform, action: str) -> list[Any]:
    trail_for(p.archive).flush(timeout=10)
    with p.archive.engine.connect() as conn:
        return list(
            conn.execute(
                select(AuditEvent.actor_id, AuditEvent.patient_id, AuditEvent.detail,
                       AuditEvent.outcome)
                .where(AuditEvent.action == action)
                .order_by(AuditEvent.seq)
            )
        )  # fmt: skip


def test_staff_review_their_patients_links(platform: Platform) -> None:
    p = platform
    client = signed_in(p, "a-tech", "zh-CN,zh;q=0.9")
    page = client.get("/staff/patients")
    assert page.status_code == 200, page.text
    assert "跨医院患者关联" in page.text and 'id="nav-patients"' in page.text
    recent = page.text[page.text.index('id="pix-recent"') :]
    # A sees its own patient's link (made at ingest from the national ID), not B's or C's
    assert 'data-patient-id="A-001"' in recent and "王芳 (Wang Fang)" in recent
    assert "B-777" not in recent and "C-42" not in recent
    assert "DICOM（其他患者 ID）" in recent
    client.headers["Accept-Language"] = "en"
    found = client.get("/staff/patients", params={"patient_id": "A-001", "issuer": "hosp-a"})
    assert found.status_code == 200
    shown = found.text[found.text.index('id="pix-patient"') : found.text.index('id="pix-recent"')]
    assert all(f'data-patient-id="{pid}"' in shown for pid in ("A-001", "B-777", "C-42"))
    assert "hosp-b" in shown and "ending in 5678" in shown
    assert "pix-merge" not in shown and "pix-split" not in shown  # the platform admin's
    # the namesake at A is not linked; another hospital's patient is not found at all
    alone = client.get("/staff/patients", params={"patient_id": "A-002", "issuer": "hosp-a"})
    assert alone.status_code == 200 and 'id="pix-not-linked"' in alone.text
    hidden = client.get("/staff/patients", params={"patient_id": "B-777", "issuer": "hosp-b"})
    assert hidden.status_code == 404 and "no patient" in hidden.text
    bad = client.get("/staff/patients", params={"platform_id": "not-an-id"})
    assert bad.status_code == 400 and "16 hexadecimal digits" in bad.text
    # a radiologist (no store permission) may not review links
    assert signed_in(p, "b-doc").get("/staff/patients").status_code == 403


def test_staff_link_their_own_patient_and_nobody_else_s(platform: Platform) -> None:
    p = platform
    person = pix.platform_id_of(p.archive, "A-001", "hosp-a")
    assert person is not None
    b_tech = signed_in(p, "b-tech")
    b_page = b_tech.get("/staff/patients")
    refused = post(b_tech, "link", b_page, patient_id="A-002", issuer="hosp-a",
                   target=person)  # fmt: skip
    assert refused.status_code == 404 and "no patient" in refused.text
    assert pix.platform_id_of(p.archive, "A-002", "hosp-a") is None  # nothing changed
    client = signed_in(p, "a-tech")
    page = client.get("/staff/patients")
    no_token = client.post(
        "/staff/patients/link", data={"patient_id": "A-002", "issuer": "hosp-a",
                                      "phone": "13800001111"}, follow_redirects=False,
    )  # fmt: skip
    assert no_token.status_code == 403
    empty = post(client, "link", page, patient_id="A-002", issuer="hosp-a")
    assert empty.status_code == 400 and "strong key, a platform patient id or a phone" in empty.text
    bad_phone = post(client, "link", page, patient_id="A-002", issuer="hosp-a", phone="call me")
    assert bad_phone.status_code == 400 and "phone" in bad_phone.text
    assert pix.platform_id_of(p.archive, "A-002", "hosp-a") is None
    done = post(client, "link", page, patient_id="A-002", issuer="hosp-a",
                phone="138 0000 1111")  # fmt: skip
    assert done.status_code == 303, done.text
    own = pix.platform_id_of(p.archive, "A-002", "hosp-a")
    assert own is not None and own != person  # the phone alone never joins two people
    assert done.headers["location"] == f"/staff/patients?platform_id={own}&done=linked"
    shown = client.get(done.headers["location"])
    assert "The link is saved." in shown.text and "ending in 1111" in shown.text
    ((actor, patient, detail, outcome),) = audit(p, "patient-link")
    assert (actor, patient, outcome) == ("a-tech", "A-002", "success")
    assert f"to {own}" in detail and "13800001111" not in detail


def test_platform_admin_merges_and_splits(platform: Platform) -> None:
    p = platform
    person = pix.platform_id_of(p.archive, "A-001", "hosp-a")
    a_tech = signed_in(p, "a-tech")
    page = a_tech.get("/staff/patients")
    assert post(a_tech, "link", page, patient_id="A-002", issuer="hosp-a",
                phone="13800001111").status_code == 303  # fmt: skip
    namesake = pix.platform_id_of(p.archive, "A-002", "hosp-a")
    assert person and namesake
    admin = signed_in(p, "admin")
    view = admin.get("/staff/patients", params={"platform_id": namesake})
    assert view.status_code == 200 and 'id="pix-merge"' in view.text
    assert post(admin, "merge", view, platform_id=namesake, into=namesake).status_code == 400
    assert post(admin, "merge", view, platform_id=namesake, into="f" * 16).status_code == 404
    merged = post(admin, "merge", view, platform_id=namesake, into=person)
    assert merged.status_code == 303
    assert merged.headers["location"] == f"/staff/patients?platform_id={person}&done=merged"
    assert pix.platform_id_of(p.archive, "A-002", "hosp-a") == person
    after = admin.get(merged.headers["location"])
    assert 'data-patient-id="A-002"' in after.text and "merged" in after.text
    split = post(admin, "split", after, platform_id=person, patient_id="A-002", issuer="hosp-a")
    assert split.status_code == 303
    alone = pix.platform_id_of(p.archive, "A-002", "hosp-a")
    assert alone not in (None, person, namesake)
    assert pix.platform_id_of(p.archive, "A-001", "hosp-a") == person
    assert [r.outcome for r in audit(p, "patient-merge")] == ["success"]
    ((_, patient, detail, _),) = audit(p, "patient-split")
    assert patient == "A-002" and f"to {alone}" in detail
    # staff are not shown the merge and split forms, and a valid form token does not help
    staff = signed_in(p, "a-tech")
    staff_page = staff.get("/staff/patients", params={"platform_id": person})
    assert staff_page.status_code == 200
    assert 'id="pix-merge"' not in staff_page.text and "pix-split" not in staff_page.text
    keys = CsrfKeys(SECRET)
    for form, values in (("merge", {"platform_id": alone or "", "into": person}),
                         ("split", {"patient_id": "A-001", "issuer": "hosp-a"})):  # fmt: skip
        token = keys.token(staff.cookies[CSRF_COOKIE], f"patient-{form}")
        refused = staff.post(f"/staff/patients/{form}", data={"csrf_token": token, **values},
                             follow_redirects=False)  # fmt: skip
        assert refused.status_code == 403 and "platform administrator" in refused.text
    assert pix.platform_id_of(p.archive, "A-002", "hosp-a") == alone
    assert pix.platform_id_of(p.archive, "A-001", "hosp-a") == person


def test_staff_cannot_take_over_another_hospital_s_patient(platform: Platform) -> None:
    """Linking one's own patient to a person one does not see, or replacing the phone of a
    person other hospitals hold too (their consent codes go there), is refused and changes
    nothing; the platform administrator may."""
    p = platform
    person = pix.platform_id_of(p.archive, "A-001", "hosp-a")
    assert person is not None
    hers = pix.split(p.archive, "B-777", "hosp-b")  # B's patient, a person of her own
    client = signed_in(p, "a-tech")
    assert client.get("/staff/patients", params={"platform_id": hers}).status_code == 404
    page = client.get("/staff/patients")
    taken = post(client, "link", page, patient_id="A-002", issuer="hosp-a", target=hers,
                 phone="13900009999")  # fmt: skip
    assert taken.status_code == 404 and hers not in taken.text
    rest = client.post("/api/pix/links", json={"patient_id": "A-002", "issuer": "hosp-a",
                                                "platform_id": hers})  # fmt: skip
    assert rest.status_code == 404
    assert pix.platform_id_of(p.archive, "A-002", "hosp-a") is None
    assert pix.patient_info(p.archive, hers).phone_hint == ""
    # A-001's person is held by B and C too, with a phone on record: staff may not change it
    before = pix.patient_info(p.archive, person).phone_hint
    phone = post(client, "link", page, patient_id="A-001", issuer="hosp-a", phone="13900009999")
    assert phone.status_code == 403 and "platform administrator" in phone.text
    rest_phone = client.post("/api/pix/links", json={"patient_id": "A-001", "issuer": "hosp-a",
                                                      "phone": "13900009999"})  # fmt: skip
    assert rest_phone.status_code == 403
    assert pix.patient_info(p.archive, person).phone_hint == before
    admin = signed_in(p, "admin")
    done = post(admin, "link", admin.get("/staff/patients"), patient_id="A-001",
                issuer="hosp-a", phone="13900009999")  # fmt: skip
    assert done.status_code == 303
    assert pix.patient_info(p.archive, person).phone_hint == "9999"
    # a hospital that does not hold the patient learns nothing of the person
    b_tech = signed_in(p, "b-tech")
    found = b_tech.get("/staff/patients", params={"patient_id": "A-001", "issuer": "hosp-a"})
    assert found.status_code == 404 and person not in found.text
