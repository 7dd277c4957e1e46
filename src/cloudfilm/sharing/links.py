"""Issuing, finding, renewing and revoking cloud film links (see docs/sharing.md).

A share reaches one or several studies of ONE patient, or an accession number whose study has
not arrived yet (``pending``; resolved to the study the first time the share is looked up after
it arrives). Its token, code and check answers are handled by :mod:`cloudfilm.sharing.crypto`;
the index never holds a usable token.

Reshares are made by a share's holder for someone else (a doctor): one level only (a reshare
never carries ``reshare``), permissions within the parent's, expiry from an hour to the
parent's, and optionally every study of the patient in this archive. Revoking a share revokes
its reshares; a reshare is never valid beyond its parent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import Conflict, Forbidden, MalformedRequest, NotFound
from cloudfilm.index.models import Patient, Share, ShareStudy, Study, StudyAccess
from cloudfilm.sharing import crypto
from cloudfilm.sharing.lockout import Lockout, aware

logger = logging.getLogger(__name__)

PERMISSIONS = ("view", "download", "reshare")
SECRET_KINDS = ("none", "code", "birth-date", "id-suffix")
#: Shortest validity of a reshare.
RESHARE_MIN = timedelta(hours=1)
#: Longest validity of any share (a typo of 3650 years is refused, not stored).
MAX_VALIDITY = timedelta(days=3650)
#: ``last_used_at`` is written at most this often per share (a write per image would not do).
TOUCH_INTERVAL = timedelta(seconds=60)
MAX_STUDIES = 100
#: Most links made from one link that are still active (a holder cannot flood the index or
#: the "who opened my images" list).
MAX_ACTIVE_RESHARES = 50
_UID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")
_DURATION = re.compile(r"^(\d{1,6})\s*(h|d|w|y)$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
          "y": timedelta(days=365)}  # fmt: skip


def utcnow() -> datetime:
    return datetime.now(UTC)


class ShareState(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    #: Before ``not_before``.
    NOT_YET = "not-yet"


def parse_expiry(text: str, now: datetime) -> datetime:
    """An expiry as ``30d``/``12h``/``2w``/``1y`` from now, a date ``YYYY-MM-DD`` (valid through
    that day, UTC) or an ISO 8601 date-time (UTC when it has no offset)."""
    value = text.strip().lower()
    if len(value) > 40:
        raise MalformedRequest("an expiry is 30d, 12h, 2w, 1y, YYYY-MM-DD or an ISO date-time")
    match = _DURATION.match(value)
    if match:
        amount = int(match.group(1)) * _UNITS[match.group(2)]
        if amount > MAX_VALIDITY:
            raise MalformedRequest(f"{text.strip()} is longer than {MAX_VALIDITY.days} days")
        return now + amount
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = date.fromisoformat(value)
            return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise MalformedRequest(
            f"{text.strip()[:40]!r} is not an expiry (30d, 12h, 2w, 1y, YYYY-MM-DD or ISO)"
        ) from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ShareInfo:
    """What a share is, as read from the index (never its secrets)."""

    id: str
    parent_id: str | None
    study_uids: tuple[str, ...]
    patient_id: str | None
    issuer: str | None
    accession_number: str | None
    pending: bool
    permissions: frozenset[str]
    secret_kind: str
    label: str
    note: str
    created_by: str
    created_at: datetime
    #: Effective expiry: never beyond the parent's.
    expires_at: datetime
    not_before: datetime | None
    #: Effective revocation: the share's own, or its parent's.
    revoked_at: datetime | None
    last_used_at: datetime | None
    #: The issuer's institution (see ``ShareRequest.institution_pk``).
    institution_pk: int | None = None

    @property
    def is_reshare(self) -> bool:
        return self.parent_id is not None

    def state(self, now: datetime) -> ShareState:
        if self.revoked_at is not None:
            return ShareState.REVOKED
        if self.expires_at <= now:
            return ShareState.EXPIRED
        if self.not_before is not None and now < self.not_before:
            return ShareState.NOT_YET
        return ShareState.ACTIVE

    def renewable_by_holder(self) -> bool:
        """Whether the holder may renew the link after it expired (docs/sharing.md): only a
        link issued by staff, protected by a code or patient check, and not revoked."""
        return not self.is_reshare and self.secret_kind != "none" and self.revoked_at is None

    def as_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "state": self.state(now).value,
            "study_uids": list(self.study_uids),
            "patient_id": self.patient_id,
            "accession_number": self.accession_number,
            "pending": self.pending,
            "permissions": sorted(self.permissions),
            "protection": self.secret_kind,
            "label": self.label,
            "note": self.note,
            "created_by": self.created_by,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "not_before": _iso(self.not_before),
            "revoked_at": _iso(self.revoked_at),
            "last_used_at": _iso(self.last_used_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else None


@dataclass(frozen=True)
class IssuedShare:
    """A new share with its secrets, shown once to whoever issued it."""

    info: ShareInfo
    token: str
    link: str
    #: The access code, when the share has one.
    code: str | None

    def as_json(self, now: datetime) -> dict[str, Any]:
        return {**self.info.as_json(now), "link": self.link, "code": self.code}


@dataclass
class ShareRequest:
    """What to issue. Empty ``study_uids`` needs an ``accession_number``."""

    study_uids: Sequence[str] = ()
    accession_number: str | None = None
    expires_at: datetime | None = None
    not_before: datetime | None = None
    #: ``none``, ``code``, ``birth-date`` or ``id-suffix``.
    secret: str = "none"
    #: The expected birth date or ID suffix when the archive does not hold it (e.g. a share
    #: issued by accession number before the images arrive).
    check_answer: str | None = None
    permissions: Collection[str] = ("view",)
    label: str = ""
    note: str = ""
    #: Reshares only: every study of the patient in this archive.
    include_prior: bool = False
    created_by: str = ""
    #: The issuer's institution (a key), or None for the platform and the CLI: an accession
    #: number then names only studies that institution owns or holds, also when it arrives.
    institution_pk: int | None = None


@dataclass
class ShareFilter:
    """Filters of :meth:`ShareLinks.list`; every filter is optional."""

    study_uid: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    state: ShareState | None = None
    parent_id: str | None = None
    #: Leave reshares out (only shares issued by staff).
    roots_only: bool = False
    limit: int = 100
    offset: int = 0


@dataclass
class _Patient:
    patient_id: str
    issuer: str
    birth_date: str | None
    study_uids: list[str] = field(default_factory=list)


class ShareLinks:
    """Issues, finds, renews and revokes shares in the archive's index."""

    def __init__(self, archive: Archive, settings: Settings | None = None) -> None:
        self.archive = archive
        self.settings = settings or archive.settings
        self.keys = crypto.ShareKeys(self.settings.secret_key)
        self.lockout = Lockout(
            archive.engine, archive.sessions,
            self.settings.share_lockout_failures, self.settings.share_lockout_minutes,
            client_failures=self.settings.share_lockout_client_failures,
        )  # fmt: skip

    def link(self, token: str) -> str:
        """The public link of a token (what the QR code holds)."""
        return f"{self.settings.public_base_url.rstrip('/')}/s/{token}"

    # ----------------------------------------------------------------------- issue

    def issue(self, request: ShareRequest, now: datetime | None = None) -> IssuedShare:
        """Issue a share (by staff). Raises NotFound, MalformedRequest or Conflict."""
        now = now or utcnow()
        with self.archive.sessions.begin() as session:
            return self.issue_in(session, request, now)

    def issue_in(self, session: Session, request: ShareRequest, now: datetime) -> IssuedShare:
        """:meth:`issue` inside the caller's transaction (committed or rolled back with it:
        the automatic cloud films mark their claim done in the same transaction)."""
        permissions = _permissions(request.permissions)
        _check_text(request)
        if request.include_prior:
            raise MalformedRequest("earlier exams can be added to reshares only")
        expires = request.expires_at or now + timedelta(days=self.settings.share_default_days)
        _check_window(expires, request.not_before, now)
        patient, pending = self._resolve_studies(session, request)
        answer = self._expected_answer(request, patient)
        return self._insert(
            session, request, now, expires, permissions, patient, pending, answer, None
        )

    def reshare(
        self, parent_id: str, request: ShareRequest, now: datetime | None = None
    ) -> IssuedShare:
        """A reshare of ``parent_id`` made by its holder (see the module docstring)."""
        now = now or utcnow()
        if request.secret not in ("none", "code"):
            raise MalformedRequest("a reshare is protected by an access code or by nothing")
        wanted = _permissions(request.permissions)
        _check_text(request)
        with self.archive.sessions.begin() as session:
            parent = session.scalars(
                select(Share).where(Share.id == parent_id).with_for_update()
            ).one_or_none()
            if parent is None:
                raise NotFound(f"share {parent_id} not found")
            info = self._info(session, parent)
            if info.state(now) is not ShareState.ACTIVE:
                raise Forbidden("this link is no longer active")
            if info.is_reshare or "reshare" not in info.permissions:
                raise Forbidden("this link does not allow sharing onward")
            if not wanted <= info.permissions - {"reshare"}:
                extra = ", ".join(sorted(wanted - (info.permissions - {"reshare"})))
                raise Forbidden(f"a reshare cannot have permissions its link lacks: {extra}")
            active = session.scalar(
                select(func.count())
                .select_from(Share)
                .where(
                    Share.parent_id == parent_id,
                    Share.revoked_at.is_(None),
                    Share.expires_at > now,
                )
            )
            if (active or 0) >= MAX_ACTIVE_RESHARES:
                raise Conflict(
                    f"this link has {MAX_ACTIVE_RESHARES} active links made from it; "
                    "withdraw one first"
                )
            if request.include_prior and request.secret != "code":
                raise MalformedRequest(
                    "a link with earlier exams must be protected by an access code"
                )
            expires = self._reshare_expiry(request.expires_at, info.expires_at, now)
            patient = self._reshare_patient(session, info, request.include_prior)
            return self._insert(
                session, request, now, expires, wanted, patient, info.pending, None, info
            )

    def _reshare_expiry(
        self, asked: datetime | None, parent_expiry: datetime, now: datetime
    ) -> datetime:
        if parent_expiry - now < RESHARE_MIN:
            raise Forbidden("this link expires within the hour; it cannot be shared onward")
        default = now + timedelta(days=self.settings.share_reshare_default_days)
        expires = min(asked or default, parent_expiry)
        if expires - now < RESHARE_MIN:
            raise MalformedRequest("a reshare is valid for an hour at least")
        return expires

    def _reshare_patient(
        self, session: Session, info: ShareInfo, include_prior: bool
    ) -> _Patient | None:
        if include_prior and info.secret_kind == "none":
            raise Forbidden(
                "earlier exams can be shared only from a link protected by a code or check"
            )
        if info.patient_id is None:  # pending: the study has not arrived, nothing to add yet
            if include_prior:
                raise Conflict("the images of this exam have not arrived yet")
            return None
        patient = _Patient(info.patient_id, info.issuer or "", None, list(info.study_uids))
        if not include_prior:
            return patient
        rows = session.scalars(
            select(Study.study_uid)
            .join(Patient, Patient.pk == Study.patient_pk)
            .where(Patient.patient_id == info.patient_id, Patient.issuer == (info.issuer or ""))
        ).all()
        patient.study_uids = sorted(set(patient.study_uids) | set(rows))
        return patient

    def _resolve_studies(
        self, session: Session, request: ShareRequest
    ) -> tuple[_Patient | None, bool]:
        uids = list(dict.fromkeys(request.study_uids))
        if not uids and not request.accession_number:
            raise MalformedRequest("name at least one study, or an accession number")
        if len(uids) > MAX_STUDIES:
            raise MalformedRequest(f"a share holds at most {MAX_STUDIES} studies")
        for uid in uids:
            if not _UID.match(uid):
                raise MalformedRequest(f"{uid[:80]!r} is not a Study Instance UID")
        patients = _patients_of(session, select(Study).where(Study.study_uid.in_(uids)))
        found = {u for p in patients for u in p.study_uids}
        missing = [u for u in uids if u not in found]
        if missing:
            raise NotFound(f"study {missing[0]} is not in the archive")
        if len(patients) > 1:
            raise MalformedRequest("a share holds studies of one patient only")
        patient = patients[0] if patients else None
        pending = False
        accession = request.accession_number
        if accession:
            if len(accession) > 64:
                raise MalformedRequest("an accession number has at most 64 characters")
            by_accession = _patients_of(session, _by_accession(accession, request.institution_pk))
            if len(by_accession) > 1:
                raise Conflict(f"accession number {accession} names studies of several patients")
            if not by_accession:
                pending = True
            elif patient is not None and not _same(patient, by_accession[0]):
                raise MalformedRequest(f"accession number {accession} is another patient's")
            else:
                merged = by_accession[0]
                merged.study_uids = sorted(set(merged.study_uids) | found)
                patient = merged
        return patient, pending

    def _expected_answer(self, request: ShareRequest, patient: _Patient | None) -> str | None:
        kind = request.secret
        if kind not in SECRET_KINDS:
            raise MalformedRequest(f"protection is one of {', '.join(SECRET_KINDS)}")
        if kind in ("none", "code"):
            return None
        known: str | None = None
        if patient is not None:
            if kind == "birth-date" and patient.birth_date:
                known = patient.birth_date
            elif kind == "id-suffix":
                known = crypto.id_suffix_of(patient.patient_id)
        if known is not None:
            return known
        if not request.check_answer:
            what = "birth date" if kind == "birth-date" else "patient ID (4 characters or more)"
            raise MalformedRequest(
                f"the archive holds no {what} for this patient; give the expected answer"
            )
        try:
            if kind == "birth-date":
                return crypto.normalize_birth_date(request.check_answer)
            return crypto.normalize_id_suffix(request.check_answer)
        except crypto.InvalidAnswer as exc:
            raise MalformedRequest(str(exc)) from exc

    def _insert(
        self,
        session: Session,
        request: ShareRequest,
        now: datetime,
        expires: datetime,
        permissions: frozenset[str],
        patient: _Patient | None,
        pending: bool,
        answer: str | None,
        parent: ShareInfo | None,
    ) -> IssuedShare:
        share_id, token = crypto.new_share_id(), crypto.new_token()
        code = crypto.new_code() if request.secret == "code" else None
        secret = code if code is not None else answer
        row = Share(
            id=share_id,
            token_sha256=crypto.token_digest(token),
            token_sealed=self.keys.seal(token, f"token:{share_id}"),
            parent_id=parent.id if parent else None,
            patient_id=patient.patient_id if patient else None,
            issuer=patient.issuer if patient else None,
            accession_number=parent.accession_number if parent else request.accession_number,
            pending=pending,
            permissions=",".join(p for p in PERMISSIONS if p in permissions),
            secret_kind=request.secret,
            secret_hash=crypto.hash_answer(secret) if secret is not None else None,
            code_sealed=self.keys.seal(code, f"code:{share_id}") if code else None,
            label=request.label.strip()[:200],
            note=request.note.strip()[:1000],
            created_by=request.created_by[:200],
            institution_pk=parent.institution_pk if parent else request.institution_pk,
            created_at=now,
            expires_at=expires,
            not_before=request.not_before,
            studies=[ShareStudy(study_uid=u) for u in (patient.study_uids if patient else [])],
        )
        session.add(row)
        session.flush()
        info = self._info(session, row, parent)
        logger.info("share %s issued by %s for %d studies", share_id, row.created_by,
                    len(info.study_uids))  # fmt: skip
        return IssuedShare(info, token, self.link(token), code)

    # ------------------------------------------------------------------------ find

    def find(self, token: str) -> ShareInfo | None:
        """The share of a token, or None (an unknown or malformed token)."""
        if not crypto.is_token(token):
            return None
        digest = crypto.token_digest(token)
        with self.archive.sessions() as session:
            row = session.scalars(select(Share).where(Share.token_sha256 == digest)).one_or_none()
            if row is None:
                return None
            if not row.pending:
                return self._info(session, row)
            share_id = row.id
        # SQLite transactions take the write lock (BEGIN IMMEDIATE): never nest sessions.
        return self._resolve_pending(share_id)

    def get(self, share_id: str) -> ShareInfo:
        """The share ``share_id``; NotFound when there is none."""
        with self.archive.sessions() as session:
            row = session.get(Share, share_id) if len(share_id) <= 16 else None
            if row is None:
                raise NotFound(f"share {share_id[:40]} not found")
            if not row.pending:
                return self._info(session, row)
        return self._resolve_pending(share_id)

    def list(self, filters: ShareFilter, now: datetime | None = None) -> list[ShareInfo]:
        """Shares matching ``filters``, newest first."""
        now = now or utcnow()
        for text in (filters.study_uid, filters.patient_id, filters.accession_number):
            if text and "\x00" in text:
                raise MalformedRequest("a filter holds a NUL character")
        stmt = select(Share).order_by(Share.created_at.desc(), Share.id)
        if filters.study_uid:
            stmt = stmt.where(
                Share.id.in_(
                    select(ShareStudy.share_id).where(ShareStudy.study_uid == filters.study_uid)
                )
            )
        if filters.patient_id:
            stmt = stmt.where(Share.patient_id == filters.patient_id)
        if filters.accession_number:
            stmt = stmt.where(Share.accession_number == filters.accession_number)
        if filters.parent_id:
            stmt = stmt.where(Share.parent_id == filters.parent_id)
        if filters.roots_only:
            stmt = stmt.where(Share.parent_id.is_(None))
        stmt = _state_filter(stmt, filters.state, now)
        stmt = stmt.offset(max(filters.offset, 0)).limit(max(min(filters.limit, 1000), 0))
        with self.archive.sessions() as session:
            rows = session.scalars(stmt).all()
            pending = [r.id for r in rows if r.pending]
            infos = [self._info(session, r) for r in rows if not r.pending]
        infos += [self._resolve_pending(share_id) for share_id in pending]
        infos.sort(key=lambda i: (i.created_at, i.id), reverse=True)
        return infos

    def _resolve_pending(self, share_id: str) -> ShareInfo:
        """Attach the study of a pending accession number when it has arrived."""
        with self.archive.sessions.begin() as session:
            row = session.scalars(select(Share).where(Share.id == share_id).with_for_update()).one()
            if row.pending and row.accession_number:
                patients = _patients_of(
                    session, _by_accession(row.accession_number, row.institution_pk)
                )
                if len(patients) == 1 and self._may_attach(row, patients[0]):
                    arrived = patients[0]
                    known = {s.study_uid for s in row.studies}
                    for uid in arrived.study_uids:
                        if uid not in known:
                            row.studies.append(ShareStudy(study_uid=uid))
                    row.patient_id, row.issuer, row.pending = (
                        arrived.patient_id, arrived.issuer, False
                    )  # fmt: skip
                    logger.info("share %s: accession %s arrived", row.id, row.accession_number)
                elif len(patients) > 1:
                    logger.warning("share %s: accession %s names several patients; kept pending",
                                   row.id, row.accession_number)  # fmt: skip
            session.flush()
            return self._info(session, row)

    @staticmethod
    def _may_attach(row: Share, arrived: _Patient) -> bool:
        if row.patient_id is None:
            return True
        return row.patient_id == arrived.patient_id and (row.issuer or "") == arrived.issuer

    def _info(self, session: Session, row: Share, parent: ShareInfo | None = None) -> ShareInfo:
        uids = tuple(sorted(s.study_uid for s in row.studies))
        expires, revoked = aware(row.expires_at), _aware_or_none(row.revoked_at)
        if row.parent_id is not None:
            if parent is None:
                parent_row = session.get(Share, row.parent_id)
                parent = self._info(session, parent_row) if parent_row is not None else None
            if parent is not None:
                expires = min(expires, parent.expires_at)
                revoked = revoked or parent.revoked_at
        return ShareInfo(
            id=row.id, parent_id=row.parent_id, study_uids=uids, patient_id=row.patient_id,
            issuer=row.issuer, accession_number=row.accession_number, pending=row.pending,
            permissions=frozenset(p for p in row.permissions.split(",") if p),
            secret_kind=row.secret_kind, label=row.label, note=row.note,
            created_by=row.created_by, created_at=aware(row.created_at), expires_at=expires,
            not_before=_aware_or_none(row.not_before), revoked_at=revoked,
            last_used_at=_aware_or_none(row.last_used_at), institution_pk=row.institution_pk,
        )  # fmt: skip

    # ---------------------------------------------------------------------- change

    def revoke(self, share_id: str, now: datetime | None = None) -> ShareInfo:
        """Revoke a share and its reshares at once (idempotent)."""
        now = now or utcnow()
        with self.archive.sessions.begin() as session:
            row = session.get(Share, share_id) if len(share_id) <= 16 else None
            if row is None:
                raise NotFound(f"share {share_id[:40]} not found")
            level = [row.id]
            while level:
                session.execute(
                    update(Share)
                    .where(Share.id.in_(level), Share.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                level = list(session.scalars(select(Share.id).where(Share.parent_id.in_(level))))
            logger.info("share %s revoked", share_id)
        return self.get(share_id)

    def renew(
        self, share_id: str, expires_at: datetime | None = None, now: datetime | None = None
    ) -> ShareInfo:
        """Give a share a new expiry (default: ``share_default_days`` from now). A revoked
        share stays revoked (409); a reshare cannot outlive its parent (capped)."""
        now = now or utcnow()
        expires = expires_at or now + timedelta(days=self.settings.share_default_days)
        info = self.get(share_id)
        if info.revoked_at is not None:
            raise Conflict("a revoked link cannot be renewed; issue a new one")
        _check_window(expires, None, now)
        if info.parent_id is not None:
            expires = min(expires, self.get(info.parent_id).expires_at)
        with self.archive.sessions.begin() as session:
            session.execute(update(Share).where(Share.id == share_id).values(expires_at=expires))
        logger.info("share %s renewed until %s", share_id, expires.isoformat())
        return self.get(share_id)

    def touch(self, info: ShareInfo, now: datetime | None = None) -> None:
        """Record that the share was used (at most once per ``TOUCH_INTERVAL``)."""
        now = now or utcnow()
        if info.last_used_at is not None and now - info.last_used_at < TOUCH_INTERVAL:
            return
        with self.archive.sessions.begin() as session:
            session.execute(update(Share).where(Share.id == info.id).values(last_used_at=now))

    # --------------------------------------------------------------------- secrets

    def normalize(self, info: ShareInfo, answer: str) -> str:
        """The canonical form of an answer to the share's code or patient check.

        Raises :class:`crypto.InvalidAnswer` for input that cannot be an answer (not a failure).
        """
        if info.secret_kind == "none":
            return ""
        normalize = {
            "code": crypto.normalize_code,
            "birth-date": crypto.normalize_birth_date,
            "id-suffix": crypto.normalize_id_suffix,
        }[info.secret_kind]
        return normalize(answer)

    def verify(self, info: ShareInfo, answer: str) -> bool:
        """Whether ``answer`` passes the share's code or patient check.

        Raises :class:`crypto.InvalidAnswer` for input that cannot be an answer (not a failure).
        """
        normalized = self.normalize(info, answer)
        if info.secret_kind == "none":
            return True
        with self.archive.sessions() as session:
            stored = session.scalar(select(Share.secret_hash).where(Share.id == info.id))
        return stored is not None and crypto.verify_answer(stored, normalized)

    def reveal(self, share_id: str) -> tuple[str | None, str | None]:
        """The link and access code of a share, for reprinting its card (None where the
        server key changed since it was issued, or where it has no code)."""
        with self.archive.sessions() as session:
            row = session.get(Share, share_id) if len(share_id) <= 16 else None
            if row is None:
                raise NotFound(f"share {share_id[:40]} not found")
            token = self.keys.unseal(row.token_sealed, f"token:{row.id}")
            code = self.keys.unseal(row.code_sealed, f"code:{row.id}") if row.code_sealed else None
        return (self.link(token) if token else None), code


def _permissions(asked: Collection[str]) -> frozenset[str]:
    unknown = set(asked) - set(PERMISSIONS)
    if unknown:
        raise MalformedRequest(
            f"unknown permission {sorted(unknown)[0][:40]!r}; use {', '.join(PERMISSIONS)}"
        )
    return frozenset(asked) | {"view"}


def _check_text(request: ShareRequest) -> None:
    """Refuse NUL characters in free text (PostgreSQL cannot store them: a 400, not a 500)."""
    named = {"accession number": request.accession_number, "label": request.label,
             "note": request.note, "created_by": request.created_by}  # fmt: skip
    for what, text in named.items():
        if text and "\x00" in text:
            raise MalformedRequest(f"the {what} holds a NUL character")


def _check_window(expires: datetime, not_before: datetime | None, now: datetime) -> None:
    if expires.tzinfo is None:
        raise MalformedRequest("the expiry needs a time zone")
    if expires <= now:
        raise MalformedRequest("the expiry is in the past")
    if expires - now > MAX_VALIDITY:
        raise MalformedRequest(f"a link is valid for {MAX_VALIDITY.days} days at most")
    if not_before is not None and (not_before.tzinfo is None or not_before >= expires):
        raise MalformedRequest("not_before must have a time zone and come before the expiry")


def _state_filter(stmt: Select[Any], state: ShareState | None, now: datetime) -> Select[Any]:
    if state is ShareState.REVOKED:
        return stmt.where(Share.revoked_at.is_not(None))
    if state is ShareState.EXPIRED:
        return stmt.where(Share.revoked_at.is_(None), Share.expires_at <= now)
    if state is ShareState.ACTIVE:
        return stmt.where(
            Share.revoked_at.is_(None),
            Share.expires_at > now,
            (Share.not_before.is_(None)) | (Share.not_before <= now),
        )
    if state is ShareState.NOT_YET:
        return stmt.where(Share.revoked_at.is_(None), Share.not_before > now)
    return stmt


def _patients_of(session: Session, studies: Select[Any]) -> list[_Patient]:
    """The patients (with their study UIDs) of the studies ``studies`` selects."""
    inner = studies.subquery()
    rows = session.execute(
        select(inner.c.study_uid, Patient.patient_id, Patient.issuer, Patient.birth_date)
        .join(Patient, Patient.pk == inner.c.patient_pk)
        .order_by(inner.c.study_uid)
    ).all()
    found: dict[tuple[str, str], _Patient] = {}
    for uid, patient_id, issuer, birth_date in rows:
        key = (patient_id, issuer)
        if key not in found:
            found[key] = _Patient(patient_id, issuer, birth_date)
        found[key].study_uids.append(uid)
    return list(found.values())


def _same(a: _Patient, b: _Patient) -> bool:
    return (a.patient_id, a.issuer) == (b.patient_id, b.issuer)


def _aware_or_none(value: datetime | None) -> datetime | None:
    return aware(value) if value is not None else None


def _by_accession(accession: str, institution_pk: int | None) -> Select[Any]:
    """The studies of an accession number, among those ``institution_pk`` owns or holds
    (all of them when None): another hospital's accession number names nothing."""
    stmt = select(Study).where(Study.accession_number == accession)
    if institution_pk is not None:
        stmt = stmt.where(
            Study.pk.in_(
                select(StudyAccess.study_pk).where(StudyAccess.institution_pk == institution_pk)
            )
        )
    return stmt
