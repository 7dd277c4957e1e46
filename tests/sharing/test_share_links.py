"""Issuing, reshares, revocation, renewal, accession numbers and lockout counters (index)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from share_support import People, store_study

from cloudfilm.archive import Archive
from cloudfilm.core.errors import Conflict, Forbidden, MalformedRequest, NotFound
from cloudfilm.index.models import ShareLockout
from cloudfilm.sharing.links import (
    ShareFilter,
    ShareLinks,
    ShareRequest,
    ShareState,
    parse_expiry,
    utcnow,
)
from cloudfilm.sharing.lockout import CLIENT, SHARE, client_subject

pytestmark = pytest.mark.db


def test_issue_defaults_and_validation(people: People, links: ShareLinks) -> None:
    now = utcnow()
    issued = links.issue(ShareRequest(study_uids=[people.a1.study, people.a2.study]), now)
    info = issued.info
    assert info.study_uids == tuple(sorted([people.a1.study, people.a2.study]))
    assert info.patient_id == people.a1.patient_id
    assert info.permissions == {"view"}
    assert info.expires_at - now == timedelta(days=365)
    assert info.state(now) is ShareState.ACTIVE and issued.code is None
    with pytest.raises(NotFound, match="not in the archive"):
        links.issue(ShareRequest(study_uids=["1.2.3.999"]))
    with pytest.raises(MalformedRequest, match="one patient"):
        links.issue(ShareRequest(study_uids=[people.a1.study, people.b1.study]))
    with pytest.raises(MalformedRequest, match="at least one study"):
        links.issue(ShareRequest())
    with pytest.raises(MalformedRequest, match="unknown permission"):
        links.issue(ShareRequest(study_uids=[people.a1.study], permissions=["delete"]))
    with pytest.raises(MalformedRequest, match="past"):
        links.issue(ShareRequest(study_uids=[people.a1.study], expires_at=now - timedelta(1)))
    with pytest.raises(MalformedRequest, match="3650 days"):
        links.issue(
            ShareRequest(study_uids=[people.a1.study], expires_at=now + timedelta(days=4000))
        )
    with pytest.raises(MalformedRequest, match="not a Study Instance UID"):
        links.issue(ShareRequest(study_uids=["1.2'; DROP TABLE share;--"]))


def test_parse_expiry() -> None:
    now = utcnow()
    assert parse_expiry("30d", now) == now + timedelta(days=30)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2w", now) == now + timedelta(weeks=2)
    assert parse_expiry("2027-01-01", now).isoformat() == "2027-01-02T00:00:00+00:00"
    assert parse_expiry("2027-01-01T08:00:00+08:00", now).isoformat().startswith("2027-01-01T08")
    for bad in ("soon", "30x", "99999y", "2027-13-01", "d" * 100):
        with pytest.raises(MalformedRequest):
            parse_expiry(bad, now)


def test_patient_checks_come_from_the_archive(people: People, links: ShareLinks) -> None:
    birth = links.issue(ShareRequest(study_uids=[people.a1.study], secret="birth-date"))
    assert links.verify(birth.info, "1980-05-17")
    assert not links.verify(birth.info, "1980-05-18")
    suffix = links.issue(ShareRequest(study_uids=[people.a1.study], secret="id-suffix"))
    assert links.verify(suffix.info, "1234")
    assert not links.verify(suffix.info, "1235")
    code = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    assert code.code is not None and links.verify(code.info, code.code)
    wrong = "000000" if code.code != "000000" else "111111"
    assert not links.verify(code.info, wrong)


def test_accession_before_the_images_then_resolved(
    archive: Archive, people: People, links: ShareLinks
) -> None:
    with pytest.raises(MalformedRequest, match="give the expected answer"):
        links.issue(ShareRequest(accession_number="ACC-LATER", secret="birth-date"))
    issued = links.issue(
        ShareRequest(accession_number="ACC-LATER", secret="birth-date", check_answer="19910203")
    )
    assert issued.info.pending and issued.info.study_uids == ()
    assert links.find(issued.token) == issued.info  # still nothing: the study has not arrived
    later = store_study(archive, "PC-1", "ACC-LATER", PatientBirthDate="19910203")
    found = links.find(issued.token)
    assert found is not None and not found.pending
    assert found.study_uids == (later.study,) and found.patient_id == "PC-1"
    assert links.verify(found, "1991-02-03")
    # an accession number already in the archive resolves at once
    now_known = links.issue(ShareRequest(accession_number="ACC-B1"))
    assert now_known.info.study_uids == (people.b1.study,) and not now_known.info.pending
    with pytest.raises(MalformedRequest, match="another patient"):
        links.issue(ShareRequest(study_uids=[people.a1.study], accession_number="ACC-B1"))


def test_reshare_rules(people: People, links: ShareLinks) -> None:
    now = utcnow()
    parent = links.issue(
        ShareRequest(
            study_uids=[people.a1.study], secret="code", permissions=["download", "reshare"],
            expires_at=now + timedelta(days=10),
        ),
        now,
    )  # fmt: skip
    capped = links.reshare(
        parent.info.id, ShareRequest(expires_at=now + timedelta(days=400), label="Dr Wang"), now
    )
    assert capped.info.expires_at == parent.info.expires_at
    assert capped.info.parent_id == parent.info.id and capped.info.label == "Dr Wang"
    default = links.reshare(parent.info.id, ShareRequest(), now)
    assert default.info.expires_at == now + timedelta(days=7)
    assert default.info.study_uids == (people.a1.study,)
    with pytest.raises(MalformedRequest, match="an hour at least"):
        links.reshare(parent.info.id, ShareRequest(expires_at=now + timedelta(minutes=59)), now)
    with pytest.raises(Forbidden, match="permissions its link lacks"):
        links.reshare(parent.info.id, ShareRequest(permissions=["reshare"]), now)
    with pytest.raises(Forbidden, match="onward"):  # no chains: a reshare cannot reshare
        links.reshare(capped.info.id, ShareRequest(), now)
    with pytest.raises(MalformedRequest, match="protected by an access code"):
        links.reshare(parent.info.id, ShareRequest(include_prior=True), now)
    prior = links.reshare(parent.info.id, ShareRequest(include_prior=True, secret="code"), now)
    assert set(prior.info.study_uids) == {people.a1.study, people.a2.study}
    assert people.b1.study not in prior.info.study_uids
    coded = links.reshare(parent.info.id, ShareRequest(secret="code"), now)
    assert coded.code is not None and links.verify(coded.info, coded.code)
    open_link = links.issue(ShareRequest(study_uids=[people.a1.study], permissions=["reshare"]))
    with pytest.raises(Forbidden, match="protected by a code"):
        links.reshare(open_link.info.id, ShareRequest(include_prior=True, secret="code"), now)
    view_only = links.issue(ShareRequest(study_uids=[people.a1.study]))
    with pytest.raises(Forbidden, match="onward"):
        links.reshare(view_only.info.id, ShareRequest(), now)


def test_revoking_a_share_revokes_its_reshares(people: People, links: ShareLinks) -> None:
    parent = links.issue(ShareRequest(study_uids=[people.a1.study], permissions=["reshare"]))
    child = links.reshare(parent.info.id, ShareRequest())
    links.revoke(parent.info.id)
    now = utcnow()
    assert links.get(parent.info.id).state(now) is ShareState.REVOKED
    found = links.find(child.token)
    assert found is not None and found.state(now) is ShareState.REVOKED
    with pytest.raises(Conflict, match="revoked"):
        links.renew(parent.info.id)
    with pytest.raises(NotFound):
        links.revoke("ffffffffffffffff")


def test_a_reshare_never_outlives_its_parent(people: People, links: ShareLinks) -> None:
    now = utcnow()
    parent = links.issue(
        ShareRequest(study_uids=[people.a1.study], permissions=["reshare"],
                     expires_at=now + timedelta(days=30)), now,
    )  # fmt: skip
    child = links.reshare(parent.info.id, ShareRequest(expires_at=now + timedelta(days=20)), now)
    links.renew(parent.info.id, now + timedelta(days=2), now)  # staff shorten the parent
    assert links.get(child.info.id).expires_at == now + timedelta(days=2)
    assert links.renew(child.info.id, now + timedelta(days=90), now).expires_at == (
        now + timedelta(days=2)
    )


def test_list_filters(people: People, links: ShareLinks) -> None:
    a = links.issue(ShareRequest(study_uids=[people.a1.study], permissions=["reshare"]))
    b = links.issue(ShareRequest(study_uids=[people.b1.study]))
    child = links.reshare(a.info.id, ShareRequest())
    links.revoke(b.info.id)
    ids = lambda f: [i.id for i in links.list(f)]  # noqa: E731
    assert set(ids(ShareFilter())) == {a.info.id, b.info.id, child.info.id}
    assert set(ids(ShareFilter(study_uid=people.a1.study))) == {a.info.id, child.info.id}
    assert ids(ShareFilter(state=ShareState.REVOKED)) == [b.info.id]
    assert set(ids(ShareFilter(state=ShareState.ACTIVE))) == {a.info.id, child.info.id}
    assert ids(ShareFilter(parent_id=a.info.id)) == [child.info.id]
    assert set(ids(ShareFilter(roots_only=True))) == {a.info.id, b.info.id}
    assert ids(ShareFilter(patient_id=people.b1.patient_id)) == [b.info.id]
    assert len(ids(ShareFilter(limit=1))) == 1


def test_lockout_counts_per_share_and_client(links: ShareLinks) -> None:
    lockout = links.lockout
    now = utcnow()
    subjects = [(SHARE, "s1"), (CLIENT, "10.0.0.1")]
    for attempt in range(1, 5):
        counted, verdict = lockout.reserve(subjects, now)
        assert counted and verdict.locked_until is None and verdict.remaining == 5 - attempt
    counted, verdict = lockout.reserve(subjects, now)  # the fifth attempt is still checked
    assert counted and verdict.locked_until == now + timedelta(minutes=15)
    assert verdict.retry_after(now) == 15 * 60
    counted, verdict = lockout.reserve(subjects, now)  # the sixth is refused unchecked
    assert not counted and verdict.remaining == 0
    assert lockout.check([(SHARE, "s1")], now).locked_until is not None
    assert lockout.check([(CLIENT, "10.0.0.1")], now).locked_until is None  # limit 20
    assert lockout.check([(SHARE, "s2"), (CLIENT, "10.0.0.2")], now).locked_until is None
    later = now + timedelta(minutes=15, seconds=1)
    assert lockout.check(subjects, later).locked_until is None
    assert lockout.reserve([(SHARE, "s1")], later)[1].remaining == 4  # a fresh window
    lockout.clear((SHARE, "s1"))
    assert lockout.check([(SHARE, "s1")], later).remaining == 5
    # failures older than the window lapse
    lockout.reserve([(SHARE, "s3")], now)
    assert lockout.reserve([(SHARE, "s3")], now + timedelta(minutes=16))[1].remaining == 4


def test_client_lock_over_many_shares(links: ShareLinks) -> None:
    lockout = links.lockout
    now = utcnow()
    client = (CLIENT, "10.0.0.7")
    for n in range(19):
        assert lockout.reserve([(SHARE, f"c{n}"), client], now)[0]
    assert lockout.check([client], now).remaining == 1
    counted, verdict = lockout.reserve([(SHARE, "c19"), client], now)
    assert counted and verdict.locked_until is not None  # the 20th locks the address
    assert not lockout.reserve([(SHARE, "c20"), client], now)[0]


def test_a_right_answer_gives_its_count_back(links: ShareLinks) -> None:
    lockout = links.lockout
    now = utcnow()
    subjects = [(SHARE, "r1"), (CLIENT, "10.0.0.8")]
    for _ in range(4):
        lockout.reserve(subjects, now)
    counted, verdict = lockout.reserve(subjects, now)
    assert counted and verdict.locked_until is not None  # the last attempt ...
    lockout.passed(subjects, now)  # ... was right: nothing stays locked or counted
    assert lockout.check([(SHARE, "r1")], now).remaining == 5
    with links.archive.sessions() as session:
        client = session.get(ShareLockout, ("client", "10.0.0.8"))
        assert client is not None and client.failures == 4 and client.locked_until is None


def test_client_subjects() -> None:
    assert client_subject("203.0.113.7") == "203.0.113.7"
    assert client_subject("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_subject("::ffff:203.0.113.7") == "203.0.113.7"  # not all of ::/64
    assert client_subject("not an address") == "not an address"


def test_a_link_makes_at_most_50_active_reshares(people: People, links: ShareLinks) -> None:
    from cloudfilm.sharing.links import MAX_ACTIVE_RESHARES

    parent = links.issue(ShareRequest(study_uids=[people.a1.study], permissions=["reshare"]))
    made = [links.reshare(parent.info.id, ShareRequest()) for _ in range(MAX_ACTIVE_RESHARES)]
    with pytest.raises(Conflict, match="withdraw one first"):
        links.reshare(parent.info.id, ShareRequest())
    links.revoke(made[0].info.id)
    assert links.reshare(parent.info.id, ShareRequest()).info.parent_id == parent.info.id
