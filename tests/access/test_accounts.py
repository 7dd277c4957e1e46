"""Institutions, users, API keys and study ownership (the index side of issue 6)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from cloudfilm.access.accounts import Accounts, utcnow
from cloudfilm.archive import Archive, StoreStatus
from cloudfilm.core.errors import Conflict, MalformedRequest, NotFound
from cloudfilm.index.models import Institution, Study, StudyAccess
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db

PASSWORD = "correct horse battery"


@pytest.fixture
def accounts(archive: Archive) -> Accounts:
    made = Accounts(archive)
    made.add_institution("hosp-a", "医院甲")
    made.add_institution("hosp-b", "Hospital B")
    return made


def test_institutions_and_users(accounts: Accounts) -> None:
    assert [i.code for i in accounts.institutions()] == ["hosp-a", "hosp-b"]
    with pytest.raises(Conflict):
        accounts.add_institution("hosp-a")
    with pytest.raises(MalformedRequest):
        accounts.add_institution("Not A Code!")
    user = accounts.create_user("li.wei", PASSWORD, "radiologist", "hosp-a", "李伟")
    assert user.institution is not None and user.institution.code == "hosp-a"
    assert "download" in user.permissions and "store" not in user.permissions
    with pytest.raises(Conflict):
        accounts.create_user("li.wei", PASSWORD, "radiologist", "hosp-a")
    with pytest.raises(MalformedRequest, match="at least 10"):
        accounts.create_user("short", "abc", "admin", "hosp-a")
    with pytest.raises(MalformedRequest, match="platform admin"):
        accounts.create_user("root", PASSWORD, "platform-admin", "hosp-a")
    with pytest.raises(MalformedRequest, match="platform admin"):
        accounts.create_user("orphan", PASSWORD, "admin", None)
    with pytest.raises(MalformedRequest, match="unknown role"):
        accounts.create_user("x", PASSWORD, "janitor", "hosp-a")
    with pytest.raises(NotFound):
        accounts.create_user("y", PASSWORD, "admin", "hosp-zz")
    assert [u.username for u in accounts.users("hosp-a")] == ["li.wei"]


def test_sign_in_lockout_and_sessions(accounts: Accounts) -> None:
    accounts.create_user("wang", PASSWORD, "technologist", "hosp-a")
    now = utcnow()
    ok = accounts.sign_in("wang", PASSWORD, "10.0.0.1", now)
    assert ok.user is not None and ok.error == ""
    for attempt in range(4):
        wrong = accounts.sign_in("wang", "not the password", "10.0.0.1", now)
        assert wrong.user is None and wrong.error == "wrong", attempt
    unknown = accounts.sign_in("nobody", PASSWORD, "10.0.0.2", now)
    assert unknown.user is None and unknown.error == "wrong"  # the same answer as a wrong one
    fifth = accounts.sign_in("wang", "not the password", "10.0.0.1", now)
    assert fifth.error == "locked" and fifth.verdict is not None
    assert fifth.verdict.retry_after(now) == 15 * 60
    locked = accounts.sign_in("wang", PASSWORD, "10.0.0.3", now)  # even the right password
    assert locked.user is None and locked.error == "locked"
    later = now + timedelta(minutes=16)
    user = accounts.sign_in("wang", PASSWORD, "10.0.0.1", later).user
    assert user is not None
    cookie = accounts.session_cookie(user, later + timedelta(hours=1))
    assert accounts.user_from_cookie(cookie, later) == user
    assert accounts.user_from_cookie(cookie, later + timedelta(hours=2)) is None  # expired
    forged = cookie.replace(f"u1.{user.pk}.", f"u1.{user.pk + 1}.", 1)
    assert accounts.user_from_cookie(forged, later) is None
    assert accounts.user_from_cookie("garbage", later) is None
    assert accounts.change_password("wang", PASSWORD, "a new long password", "10.0.0.1")
    assert accounts.user_from_cookie(cookie, later) is None  # the change ended the session
    assert not accounts.change_password("wang", PASSWORD, "another password!", "10.0.0.1")
    accounts.set_disabled("wang", True)
    assert accounts.sign_in("wang", "a new long password", "10.0.0.1").error == "disabled"


def test_api_keys(accounts: Accounts) -> None:
    info, key = accounts.create_api_key("hosp-a", "technologist", "RIS", created_by="cli")
    assert key.startswith(f"cfk_{info.key_id}_") and len(key) == 4 + 12 + 1 + 43
    found = accounts.api_key(key)
    assert found is not None and found.key_id == info.key_id and found.label == "RIS"
    assert accounts.api_key(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # wrong secret
    assert accounts.api_key("cfk_000000000000_" + "x" * 43) is None  # unknown id
    assert accounts.api_key("Bearer nonsense") is None
    accounts.revoke_api_key(info.key_id)
    assert accounts.api_key(key) is None
    with pytest.raises(NotFound):
        accounts.revoke_api_key(info.key_id)
    with pytest.raises(MalformedRequest):
        accounts.create_api_key(None, "technologist")


def _access(archive: Archive, study_uid: str) -> dict[str, str]:
    with archive.sessions() as session:
        rows = session.execute(
            select(Institution.code, StudyAccess.relation)
            .join(StudyAccess, StudyAccess.institution_pk == Institution.pk)
            .join(Study, Study.pk == StudyAccess.study_pk)
            .where(Study.study_uid == study_uid)
        ).all()
    return {code: relation for code, relation in rows}


def test_a_study_belongs_to_its_sender_and_copies_make_holders(
    archive: Archive, accounts: Accounts
) -> None:
    a = accounts.institution("hosp-a").pk
    b = accounts.institution("hosp-b").pk
    first = make_dataset(PatientID="P1")
    assert archive.store(part10(first), institution=a).status is StoreStatus.STORED
    assert _access(archive, first.StudyInstanceUID) == {"hosp-a": "owner"}
    # hospital B sends back the very same instance (pulled into its PACS): B now holds it
    again = archive.store(part10(first), institution=b)
    assert again.status is StoreStatus.DUPLICATE
    assert _access(archive, first.StudyInstanceUID) == {"hosp-a": "owner", "hosp-b": "holder"}
    # new data into a study that only A sees, from C (no access): refused, the study unchanged
    accounts.add_institution("hosp-c")
    c = accounts.institution("hosp-c").pk
    intruder = make_dataset(
        PatientID="P1", StudyInstanceUID=first.StudyInstanceUID,
        SeriesInstanceUID=first.SeriesInstanceUID,
    )  # fmt: skip
    refused = archive.store(part10(intruder), institution=c)
    assert refused.status is StoreStatus.CONFLICT
    assert first.StudyInstanceUID not in (refused.reason or "")
    assert "hosp-c" not in _access(archive, first.StudyInstanceUID)
    # but B, a holder, may add to it; and stores without an institution leave access alone
    more = make_dataset(
        PatientID="P1", StudyInstanceUID=first.StudyInstanceUID,
        SeriesInstanceUID=first.SeriesInstanceUID,
    )  # fmt: skip
    assert archive.store(part10(more), institution=b).status is StoreStatus.STORED
    assert archive.store(part10(make_dataset(PatientID="P2"))).ok
    assert _access(archive, first.StudyInstanceUID) == {"hosp-a": "owner", "hosp-b": "holder"}


def test_deleting_a_study_removes_its_access(archive: Archive, accounts: Accounts) -> None:
    a = accounts.institution("hosp-a").pk
    ds = make_dataset(PatientID="P9")
    assert archive.store(part10(ds), institution=a).ok
    archive.delete_study(ds.StudyInstanceUID)
    with archive.sessions() as session:
        assert session.scalars(select(StudyAccess)).all() == []
    again = make_dataset(PatientID="P9")  # a new study may get the same key (SQLite)
    b = accounts.institution("hosp-b").pk
    assert archive.store(part10(again), institution=b).ok
    assert _access(archive, again.StudyInstanceUID) == {"hosp-b": "owner"}


def test_a_right_password_clears_the_count_and_every_attempt_is_audited(
    accounts: Accounts, archive: Archive
) -> None:
    from cloudfilm.audit import trail_for
    from cloudfilm.index.models import AuditEvent

    accounts.create_user("zhao", PASSWORD, "referring", "hosp-b")
    for _ in range(4):
        assert accounts.sign_in("zhao", "wrong password", "10.1.1.1").error == "wrong"
    assert accounts.sign_in("zhao", PASSWORD, "10.1.1.1", agent="Firefox").user is not None
    for _ in range(4):  # a fresh count after the right password: no lock yet
        assert accounts.sign_in("zhao", "wrong password", "10.1.1.1").error == "wrong"
    assert trail_for(archive).flush(timeout=30)
    with archive.sessions() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "sign-in").order_by(AuditEvent.seq)
        ).all()
        seen = [(r.outcome, r.actor_id, r.institution) for r in rows]
        assert all(PASSWORD not in r.detail and "wrong password" not in r.detail for r in rows)
    assert (
        seen
        == [("denied", "zhao", "")] * 4
        + [("success", "zhao", "hosp-b")]
        + [("denied", "zhao", "")] * 4
    )


def test_an_accession_number_names_only_the_issuers_studies(
    archive: Archive, accounts: Accounts
) -> None:
    from cloudfilm.sharing.links import ShareLinks, ShareRequest

    a = accounts.institution("hosp-a").pk
    b = accounts.institution("hosp-b").pk
    theirs = make_dataset(PatientID="PA1", AccessionNumber="ACC-77")
    assert archive.store(part10(theirs), institution=a).ok
    links = ShareLinks(archive)
    # hospital B issues a card for the same accession number: it must not reach A's study
    card = links.issue(ShareRequest(accession_number="ACC-77", institution_pk=b, secret="code"))
    assert card.info.pending and card.info.study_uids == ()
    assert links.find(card.token) is not None
    assert links.get(card.info.id).study_uids == ()  # A's study is never attached
    # B's own exam with that accession number arrives: the card reaches it, and only it
    ours = make_dataset(PatientID="PB1", AccessionNumber="ACC-77")
    assert archive.store(part10(ours), institution=b).ok
    found = links.find(card.token)
    assert found is not None and found.study_uids == (ours.StudyInstanceUID,)
    # the platform (no institution) sees every study: the number names two patients there
    with pytest.raises(Conflict, match="several patients"):
        links.issue(ShareRequest(accession_number="ACC-77"))
