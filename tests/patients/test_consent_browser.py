"""The consent flow end to end in Chromium: the patient grants hospital B from their cloud film
with the code sent to their phone; a doctor at B signs in, finds and opens the exam, records
that it is accepted; the patient withdraws; B no longer sees it. Every step is audited."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from share_support import ThreadServer
from sqlalchemy import select

from cloudfilm.access.accounts import Accounts, utcnow
from cloudfilm.archive import Archive
from cloudfilm.audit import trail_for
from cloudfilm.index.models import AuditEvent
from cloudfilm.patients.notify import outbox
from cloudfilm.sharing.links import ShareLinks, ShareRequest
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db

KEY = "test-production-secret-key-0123456789abcdef"
PASSWORD = "correct horse battery"
PHONE = "+8613912345678"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]  # fmt: skip


def test_consent_flow_in_chromium(archive: Archive, serve: Callable[..., ThreadServer]) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import expect, sync_playwright

    accounts = Accounts(archive)
    a = accounts.add_institution("hosp-a", "甲医院").pk
    accounts.add_institution("hosp-b", "乙医院")
    accounts.create_user("dr.li", PASSWORD, "radiologist", "hosp-b", "李医生")
    item = Dataset()
    item.PatientID, item.IssuerOfPatientID = "110105194912310021", "CN-NID"
    ds = make_dataset(PatientID="A-9", IssuerOfPatientID="hosp-a", PatientName="Li^Na=李^娜",
                      SpecificCharacterSet="ISO_IR 192", OtherPatientIDsSequence=[item],
                      PatientTelephoneNumbers=PHONE)  # fmt: skip
    assert archive.store(part10(ds), institution=a).ok
    study = str(ds.StudyInstanceUID)
    server = serve(env="production", secret_key=KEY)
    settings = archive.settings.model_copy(update={"env": "production", "secret_key": KEY})
    wanted = ShareRequest(study_uids=[study], secret="none",
                          permissions=["view", "download", "reshare"])  # fmt: skip
    share = ShareLinks(archive, settings).issue(wanted, utcnow())
    origin = server.origin
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            phone = chromium.new_context(locale="zh-CN", viewport={"width": 390, "height": 844})
            patient = phone.new_page()
            patient.goto(f"{origin}/s/{share.token}/consents")
            expect(patient.locator("h1")).to_have_text("授权其他医院查看我的检查")
            patient.select_option("#consent-institution", "hosp-b")
            patient.select_option("#consent-days", "30")
            patient.click("#consent-form button[type=submit]")
            expect(patient.locator("h1")).to_have_text("输入验证码")
            (message,) = outbox(archive, PHONE)
            code = re.search(r"\b(\d{6})\b", message.text)
            assert code is not None and "乙医院" in message.text
            patient.fill("#consent-code", code.group(1))
            patient.click("#consent-code-form button[type=submit]")
            expect(patient.locator("#consent-notice")).to_have_text("授权已生效。")
            expect(patient.locator("#consent-list li")).to_have_count(1)

            desk = chromium.new_context(locale="en-GB")
            doctor = desk.new_page()
            doctor.goto(f"{origin}/staff/signin")
            doctor.fill("#username", "dr.li")
            doctor.fill("#password", PASSWORD)
            doctor.click("#signin-submit")
            doctor.goto(f"{origin}/staff/?name=李")
            doctor.click(f"tr[data-study-uid='{study}'] a")
            expect(doctor.locator("h1 .patient-name")).to_contain_text("李")
            viewer = doctor.context.request.get(f"{origin}/viewer/studies/{study}")
            assert viewer.status == 200
            doctor.check("#recognition-form input[value=accepted]")
            doctor.fill("#recognition-reason", "CT of last week is enough")
            doctor.click("#recognition-form button[type=submit]")
            expect(doctor.locator("#recognition-done")).to_be_visible()
            expect(doctor.locator("#recognition-decisions li")).to_contain_text("dr.li")

            trail_for(archive).flush()
            patient.reload()
            expect(patient.locator("#consent-openings")).to_contain_text("dr.li")
            patient.click("#consent-list form button")
            expect(patient.locator("#consent-notice")).to_contain_text("授权已撤回")
            gone = doctor.goto(f"{origin}/staff/studies/{study}")
            assert gone is not None and gone.status == 404
        finally:
            chromium.close()
    trail_for(archive).flush()
    with archive.sessions() as session:
        rows = session.execute(select(AuditEvent.action, AuditEvent.actor_id,
                                      AuditEvent.outcome)).all()  # fmt: skip
    actions = {(action, outcome) for action, _actor, outcome in rows}
    assert {("sign-in", "success"), ("consent-request", "success"), ("consent-give", "success"),
            ("view", "success"), ("consent-withdraw", "success")} <= actions  # fmt: skip
    assert any(actor == "dr.li" and action == "recognition" for action, actor, _ in rows)
    assert ("retrieve", "denied") in actions or ("view", "denied") in actions
