"""The staff audit page and its exports (``/staff/audit``) through the TestClient on a
production application: who sees which events, the filters, paging, JSON lines and DICOM
exports, reading the trail being audited, and hostile parameters answered with 400."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from cloudfilm.access.accounts import Accounts, utcnow
from cloudfilm.api.app import create_app
from cloudfilm.api.deps import STAFF_COOKIE
from cloudfilm.archive import Archive
from cloudfilm.audit import AuditRecord, AuditTrail
from cloudfilm.audit import pages as audit_pages
from cloudfilm.audit.export import iter_rows
from cloudfilm.audit.trail import chain_hash
from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

KEY = "test-production-secret-key-0123456789abcdef"
PASSWORD = "correct horse battery"
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def world(archive: Archive, trail: AuditTrail) -> dict[str, str]:
    """Hospitals A and B with a study each, their admins, and a few recorded events."""
    accounts = Accounts(archive, archive.settings.model_copy(update={"secret_key": KEY}))
    uids = {}
    for code, pid in (("hosp-a", "PA-1"), ("hosp-b", "PB-1")):
        pk = accounts.add_institution(code).pk
        ds = make_dataset(PatientID=pid)
        assert archive.store(part10(ds), institution=pk).ok
        uids[code] = str(ds.StudyInstanceUID)
    accounts.create_user("admin.a", PASSWORD, "admin", "hosp-a")
    accounts.create_user("tech.a", PASSWORD, "technologist", "hosp-a")
    accounts.create_user("admin.b", PASSWORD, "admin", "hosp-b")
    accounts.create_user("root", PASSWORD, "platform-admin", None)
    a, b = uids["hosp-a"], uids["hosp-b"]
    events = [
        # (name, record): the name goes in ``detail`` so that tests can find the row
        AuditRecord("view", actor_kind="user", actor_id="dr.b", institution="hosp-b",
                    study_uid=a, patient_id="PA-1", detail="b-views-a", at=T0),
        AuditRecord("view", actor_kind="user", actor_id="dr.b", institution="hosp-b",
                    study_uid=b, patient_id="PB-1", detail="b-views-b",
                    at=T0 + timedelta(hours=1)),
        AuditRecord("share-view", actor_kind="share", actor_id="0123456789abcdef",
                    study_uid=a, detail="link-views-a", at=T0 + timedelta(hours=2)),
        AuditRecord("query", outcome="denied", actor_kind="anonymous", detail="anonymous",
                    at=T0 + timedelta(hours=3)),
        AuditRecord("retrieve", actor_kind="apikey", actor_id="abcdefabcdef",
                    institution="hosp-a", study_uid=b, detail="a-key-on-b", outcome="failure",
                    at=T0 + timedelta(days=1)),
    ]  # fmt: skip
    for event in events:
        trail.record(event)
    trail.flush(timeout=10)
    return {"a": a, "b": b}


@pytest.fixture
def client(archive: Archive, world: dict[str, str]) -> Iterator[TestClient]:
    settings = archive.settings.model_copy(update={"env": "production", "secret_key": KEY})
    with TestClient(create_app(settings, archive), headers={"Accept-Language": "en"}) as made:
        yield made


@pytest.fixture
def as_user(client: TestClient, archive: Archive) -> Callable[[str], TestClient]:
    accounts = Accounts(archive, archive.settings.model_copy(update={"secret_key": KEY}))

    def sign(username: str) -> TestClient:
        client.cookies.clear()
        until = utcnow() + timedelta(hours=1)
        client.cookies.set(STAFF_COOKIE, accounts.session_cookie(accounts.user(username), until))
        return client

    return sign


def shown(page: str) -> list[str]:
    """The ``detail`` names of the recorded test events a page shows, newest first."""
    names = ("b-views-a", "b-views-b", "link-views-a", "anonymous", "a-key-on-b")
    details = re.findall(r'<td class="muted">([^<]*)</td>', page)
    return [d for d in details if d in names]


def test_the_platform_admin_sees_every_event(as_user: Callable[[str], TestClient]) -> None:
    page = as_user("root").get("/staff/audit", params={"until": "2026-11-30"})
    assert page.status_code == 200, page.text
    assert shown(page.text) == ["a-key-on-b", "anonymous", "link-views-a", "b-views-b",
                                "b-views-a"]  # fmt: skip


def test_an_institution_admin_sees_its_people_and_its_studies(
    as_user: Callable[[str], TestClient],
) -> None:
    page = as_user("admin.a").get("/staff/audit", params={"until": "2026-11-30"})
    assert page.status_code == 200
    # its API key's event (on B's study), and everyone's events on the study A owns
    assert shown(page.text) == ["a-key-on-b", "link-views-a", "b-views-a"]
    page_b = as_user("admin.b").get("/staff/audit", params={"until": "2026-11-30"})
    # B's people anywhere, and A's key on the study B owns
    assert shown(page_b.text) == ["a-key-on-b", "b-views-b", "b-views-a"]
    # a filter narrows within the scope, never widens it: A's people on B's studies only
    wide = as_user("admin.b").get("/staff/audit", params={"institution": "hosp-a"})
    assert shown(wide.text) == ["a-key-on-b"]
    anonymous = as_user("admin.b").get("/staff/audit", params={"actor_kind": "anonymous"})
    assert shown(anonymous.text) == []


def test_other_roles_may_not_read_the_trail(as_user: Callable[[str], TestClient]) -> None:
    assert as_user("tech.a").get("/staff/audit").status_code == 403
    assert as_user("tech.a").get("/staff/audit/export").status_code == 403
    as_user("tech.a").cookies.clear()
    anonymous = as_user("tech.a")
    anonymous.cookies.clear()
    answer = anonymous.get("/staff/audit", follow_redirects=False)
    assert answer.status_code == 303 and "/staff/signin" in answer.headers["location"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"action": "view"}, ["b-views-b", "b-views-a"]),
        ({"outcome": "failure"}, ["a-key-on-b"]),
        ({"outcome": "denied"}, ["anonymous"]),
        ({"actor_kind": "share"}, ["link-views-a"]),
        ({"actor_kind": "user", "actor_id": "dr.b"}, ["b-views-b", "b-views-a"]),
        ({"patient_id": "PB-1"}, ["b-views-b"]),
        ({"since": "2026-11-01 09:00", "until": "2026-11-01T11:00"},
         ["link-views-a", "b-views-b"]),
        ({"since": "2026-11-01T16:00+08:00", "until": "2026-11-01T08:30Z"}, ["b-views-a"]),
        ({"since": "2026-11-02", "until": "2026-11-02"}, ["a-key-on-b"]),
        ({"institution": "hosp-a", "since": "2026-11-01"}, ["a-key-on-b"]),
    ],
)  # fmt: skip
def test_filters(
    as_user: Callable[[str], TestClient], params: dict[str, str], expected: list[str]
) -> None:
    page = as_user("root").get("/staff/audit", params=params)
    assert page.status_code == 200, page.text
    assert shown(page.text) == expected


def test_the_study_filter(as_user: Callable[[str], TestClient], world: dict[str, str]) -> None:
    page = as_user("root").get("/staff/audit", params={"study_uid": world["a"]})
    assert shown(page.text) == ["link-views-a", "b-views-a"]


def test_paging_goes_below_the_last_event_shown(
    as_user: Callable[[str], TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_pages, "PAGE_ROWS", 2)
    client = as_user("root")
    first = client.get("/staff/audit", params={"until": "2026-11-30"})
    assert shown(first.text) == ["a-key-on-b", "anonymous"]
    seen = shown(first.text)
    url = re.search(r'href="([^"]+)" rel="next"', first.text)
    while url:
        page = client.get(url.group(1).replace("&amp;", "&"))
        assert page.status_code == 200 and 'rel="first"' in page.text
        seen += shown(page.text)
        url = re.search(r'href="([^"]+)" rel="next"', page.text)
    assert seen == ["a-key-on-b", "anonymous", "link-views-a", "b-views-b", "b-views-a"]


def test_export_as_json_lines_re_verifies(
    as_user: Callable[[str], TestClient], archive: Archive, trail: AuditTrail
) -> None:
    answer = as_user("admin.a").get("/staff/audit/export", params={"format": "jsonl"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in answer.headers["content-disposition"]
    rows = [json.loads(line) for line in answer.text.splitlines()]
    assert [r["detail"] for r in rows if r["detail"] in ("b-views-a", "link-views-a",
            "a-key-on-b", "anonymous", "b-views-b")] == ["b-views-a", "link-views-a",
                                                          "a-key-on-b"]  # fmt: skip
    for row in rows:
        assert chain_hash(row["prev_hash"], row) == row["hash"]
    assert all(r["institution"] == "hosp-a" or r["study_uid"] for r in rows)
    trail.flush(timeout=10)
    (export_row,) = [r for r in iter_rows(archive.engine) if r["action"] == "audit-export"]
    assert export_row["actor_id"] == "admin.a" and export_row["outcome"] == "success"
    assert f"{len(rows)} rows as jsonl" in export_row["detail"]
    assert '"visible_to": "hosp-a"' in export_row["detail"]


def test_export_as_dicom_audit_messages(
    as_user: Callable[[str], TestClient], world: dict[str, str]
) -> None:
    answer = as_user("root").get(
        "/staff/audit/export", params={"format": "dicom", "study_uid": world["a"]}
    )
    assert answer.status_code == 200
    lines = answer.text.splitlines()
    assert len(lines) == 2
    for line in lines:
        message = ET.fromstring(line)
        assert message.tag == "AuditMessage"
        event = message.find("EventIdentification/EventID")
        assert event is not None and event.get("csd-code") == "110103"  # instances accessed
        ids = [
            p.get("ParticipantObjectID") for p in message.iter("ParticipantObjectIdentification")
        ]
        assert world["a"] in ids


def test_searching_is_audited(
    as_user: Callable[[str], TestClient], archive: Archive, trail: AuditTrail
) -> None:
    as_user("admin.b").get("/staff/audit", params={"action": "view"})
    as_user("tech.a").get("/staff/audit")
    trail.flush(timeout=10)
    rows = [r for r in iter_rows(archive.engine) if r["action"] == "audit-search"]
    assert [(r["actor_id"], r["outcome"]) for r in rows] == [("admin.b", "success"),
                                                             ("tech.a", "denied")]  # fmt: skip
    assert '"action": "view"' in rows[0]["detail"]


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"since": "2026-13-45"},
        {"since": "２０２６-11-01"},
        {"since": "2026-11-02", "until": "2026-11-01"},
        {"until": "2026-11-01T25:00"},
        {"actor_kind": "robot"},
        {"action": "view'; DROP TABLE audit_event; --"},
        {"study_uid": "1.2' OR '1'='1"},
        {"patient_id": "PA\x00-1"},
        {"patient_id": "P" * 65},
        {"outcome": "maybe"},
        {"institution": "Hosp A"},
        {"before": "-1"},
        {"before": "99999999999999999999"},
        {"before": "9223372036854775808"},
        {"before": "１２"},
    ],
)
def test_hostile_parameters_get_a_400_page(
    as_user: Callable[[str], TestClient], params: dict[str, str]
) -> None:
    client = as_user("root")
    page = client.get("/staff/audit", params=params)
    assert page.status_code == 400, page.text
    assert 'id="audit-error"' in page.text
    if "before" not in params:
        export = client.get("/staff/audit/export", params=params)
        assert export.status_code == 400


def test_an_unknown_export_format_is_a_400(as_user: Callable[[str], TestClient]) -> None:
    assert as_user("root").get("/staff/audit/export", params={"format": "xml"}).status_code == 400


def test_the_largest_event_number_is_accepted(as_user: Callable[[str], TestClient]) -> None:
    page = as_user("root").get("/staff/audit", params={"before": str(2**63 - 1)})
    assert page.status_code == 200
