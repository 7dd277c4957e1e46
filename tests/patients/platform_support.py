"""Two hospitals' worth of people for the patient tests: the same person (a national ID number
in Other Patient IDs) at hospitals A, B and C, a namesake at A, staff of each hospital, the
platform administrator, and the patient's cloud film of A's exam (see ``platform``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from cloudfilm.access.accounts import Accounts, utcnow
from cloudfilm.api.app import create_app
from cloudfilm.api.deps import STAFF_COOKIE
from cloudfilm.archive import Archive
from cloudfilm.sharing.links import ShareLinks, ShareRequest
from support.instances import make_dataset, part10

NATIONAL_ID = "11010519491231002X"
PHONE = "+8613812345678"
#: The server key of the platform's application (CSRF tokens, sessions).
SECRET = "k" * 40


def other_ids(value: str, issuer: str = "CN-NID") -> list[Dataset]:
    item = Dataset()
    item.PatientID, item.IssuerOfPatientID, item.TypeOfPatientID = value, issuer, "TEXT"
    return [item]


@dataclass
class Platform:
    client: TestClient
    archive: Archive
    accounts: Accounts
    a_study: str
    b_study: str  # the same person's exam at B (B's own)
    c_study: str  # and at C
    stranger: str  # another person at A, same name, no strong key
    a_token: str  # the patient's cloud film of A's exam
    cookies: dict[str, dict[str, str]] = field(default_factory=dict)

    def as_(self, who: str) -> TestClient:
        self.client.cookies.clear()
        for name, value in self.cookies.get(who, {}).items():
            self.client.cookies.set(name, value)
        return self.client


def build_platform(archive: Archive) -> Iterator[Platform]:
    """The platform (a generator: the application's client is closed after the test)."""
    accounts = Accounts(archive)
    pks = {
        code: accounts.add_institution(code, name).pk
        for code, name in (("hosp-a", "甲医院"), ("hosp-b", "乙医院"), ("hosp-c", "丙医院"))
    }
    studies = {}
    for code, pid in (("hosp-a", "A-001"), ("hosp-b", "B-777"), ("hosp-c", "C-42")):
        phone = {"PatientTelephoneNumbers": PHONE} if code == "hosp-a" else {}
        ds = make_dataset(
            PatientID=pid,
            IssuerOfPatientID=code,
            PatientName="Wang^Fang=王^芳",
            SpecificCharacterSet="ISO_IR 192",
            OtherPatientIDsSequence=other_ids(NATIONAL_ID.lower()),
            **phone,
        )
        assert archive.store(part10(ds), institution=pks[code]).ok
        studies[code] = str(ds.StudyInstanceUID)
    stranger = make_dataset(
        PatientID="A-002",
        IssuerOfPatientID="hosp-a",
        PatientName="Wang^Fang=王^芳",
        SpecificCharacterSet="ISO_IR 192",
    )
    assert archive.store(part10(stranger), institution=pks["hosp-a"]).ok
    settings = archive.settings.model_copy(update={"env": "production", "secret_key": SECRET})
    accounts = Accounts(archive, settings)
    until = utcnow() + timedelta(hours=2)
    cookies = {}
    for name, role, inst in (
        ("a-tech", "technologist", "hosp-a"),
        ("b-doc", "radiologist", "hosp-b"),
        ("b-other", "radiologist", "hosp-b"),
        ("b-ref", "referring", "hosp-b"),
        ("b-tech", "technologist", "hosp-b"),
        ("c-doc", "radiologist", "hosp-c"),
        ("admin", "platform-admin", None),
    ):
        user = accounts.create_user(name, "a long enough password", role, inst)
        cookies[name] = {STAFF_COOKIE: accounts.session_cookie(user, until)}
    links = ShareLinks(archive, settings)
    share = links.issue(
        ShareRequest(
            study_uids=[studies["hosp-a"]],
            secret="none",
            permissions=["view", "download", "reshare"],
        ),
        utcnow(),
    )
    with TestClient(create_app(settings, archive)) as client:
        yield Platform(
            client,
            archive,
            accounts,
            studies["hosp-a"],
            studies["hosp-b"],
            studies["hosp-c"],
            str(stranger.StudyInstanceUID),
            str(share.token),
            cookies,
        )
