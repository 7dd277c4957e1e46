"""A patient's consent that another institution — or one doctor there — sees their exams.

Holding a cloud film is not enough to consent: from the cloud film page the patient asks for a
consent (institution, optionally one doctor by user name, this link's exams or all their
exams, a period of at most ``consent_max_days``) and a six-digit one-time code goes to the
phone on record of their platform patient (``cloudfilm.patients.pix``) through the notifier.
The consent is ``pending`` until the code is entered on the same link within
``consent_code_minutes``; ``consent_code_attempts`` wrong codes drop it (state
``refused``). Staff may instead record a consent given in person (``confirmed_via``
``staff:<user>``). An ``active`` consent lasts until ``expires_at`` or until the patient
withdraws it from the page (``withdrawn``).

While it is active, the grantee sees the exams it covers through every door
(:func:`consent_condition` in SQL, :func:`consent_sees` for one study): the staff pages, the
REST list of a patient's exams across institutions, QIDO-RS/WADO-RS, the viewer. Consents are
per platform patient: an exam of the same person sent later by any institution is covered by
an "all exams" consent.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, exists, insert, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from cloudfilm.archive import Archive
from cloudfilm.core.errors import Conflict, Forbidden, Gone, InvalidQuery, NotFound
from cloudfilm.index.models import (
    Consent,
    ConsentStudy,
    Institution,
    Patient,
    PatientLink,
    PlatformPatient,
    Study,
    utcnow,
)
from cloudfilm.patients import pix
from cloudfilm.patients.notify import notifier_for
from cloudfilm.sharing.crypto import derive_key

logger = logging.getLogger(__name__)

__all__ = [
    "ConsentInfo",
    "confirm",
    "consent_condition",
    "consent_sees",
    "consents_for_study",
    "record_by_staff",
    "request_consent",
    "withdraw",
]

#: States in which a consent no longer changes.
FINAL = ("withdrawn", "refused")


@dataclass(frozen=True)
class ConsentInfo:
    id: str
    institution: str
    institution_name: str
    username: str | None
    all_exams: bool
    study_uids: tuple[str, ...]
    state: str
    expires_at: datetime
    created_at: datetime
    confirmed_via: str
    created_by: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "institution": self.institution,
            "institution_name": self.institution_name,
            "username": self.username,
            "all_exams": self.all_exams,
            "study_uids": list(self.study_uids),
            "state": self.state,
            "expires_at": self.expires_at.isoformat(),
            "created_at": self.created_at.isoformat(),
            "confirmed_via": self.confirmed_via,
        }

    def in_force(self, now: datetime) -> bool:
        return self.state == "active" and _aware(self.expires_at) > now


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _code_hmac(archive: Archive, consent_id: str, code: str) -> str:
    key = derive_key(archive.settings.secret_key, b"cloudfilm consent code v1")
    return hmac.new(key, f"{consent_id}:{code}".encode(), hashlib.sha256).hexdigest()


def _institution(archive: Archive, code: str) -> tuple[int, str]:
    with archive.engine.connect() as conn:
        found = conn.execute(
            select(Institution.pk, Institution.name).where(Institution.code == code)
        ).first()
    if found is None:
        raise InvalidQuery(f"no institution {code!r}")
    return int(found[0]), str(found[1] or code)


def _platform_patient(archive: Archive, study_uid: str) -> int:
    """The platform patient of the study's patient, linking the patient when it has none."""
    with archive.engine.connect() as conn:
        found = pix.platform_patient_of_study(conn, study_uid)
        if found is not None:
            return found
        row = conn.execute(
            select(Patient.patient_id, Patient.issuer)
            .join(Study, Study.patient_pk == Patient.pk)
            .where(Study.study_uid == study_uid)
        ).first()
    if row is None:
        raise NotFound(f"study {study_uid} not found")
    pix.link(archive, row[0], row[1], source="consent", created_by="consent")
    with archive.engine.connect() as conn:
        linked = pix.platform_patient_of_study(conn, study_uid)
    assert linked is not None
    return linked


def _check_scope(archive: Archive, platform_pk: int, study_uids: list[str]) -> None:
    """Each study named must be one of the platform patient's."""
    with archive.engine.connect() as conn:
        for uid in study_uids:
            if pix.platform_patient_of_study(conn, uid) != platform_pk:
                raise InvalidQuery(f"study {uid} is not one of this patient's exams")


def _new_consent(
    archive: Archive,
    platform_pk: int,
    institution_pk: int,
    *,
    username: str | None,
    study_uids: list[str] | None,
    days: int,
    created_by: str,
    state: str,
    confirmed_via: str = "",
    code: str | None = None,
) -> str:
    settings = archive.settings
    if not 1 <= days <= settings.consent_max_days:
        raise InvalidQuery(f"a consent lasts 1 to {settings.consent_max_days} days")
    if username is not None and not (0 < len(username) <= 64 and username.isprintable()):
        raise InvalidQuery("a doctor is named by a user name of at most 64 characters")
    now = utcnow()
    consent_id = secrets.token_hex(8)
    values: dict[str, Any] = {
        "id": consent_id, "platform_patient_pk": platform_pk,
        "grantee_institution_pk": institution_pk, "grantee_username": username,
        "all_exams": study_uids is None, "state": state,
        "expires_at": now + timedelta(days=days), "confirmed_via": confirmed_via,
        "code_failures": 0, "created_by": created_by[:200], "created_at": now,
        "confirmed_at": now if state == "active" else None,
    }  # fmt: skip
    if code is not None:
        values["code_hmac"] = _code_hmac(archive, consent_id, code)
        values["code_expires_at"] = now + timedelta(minutes=settings.consent_code_minutes)
    with archive.engine.begin() as conn:
        created = conn.execute(insert(Consent).values(**values)).inserted_primary_key
        assert created is not None
        for uid in dict.fromkeys(study_uids or ()):
            conn.execute(insert(ConsentStudy).values(consent_pk=created[0], study_uid=uid))
    return consent_id


def request_consent(
    archive: Archive,
    study_uid: str,
    *,
    institution: str,
    username: str | None,
    study_uids: list[str] | None,
    days: int,
    created_by: str,
) -> tuple[ConsentInfo, str]:
    """A pending consent for the patient of ``study_uid``, and the code sent to their phone;
    returns the consent and the last digits of the phone it went to.

    Raises
    ------
    Forbidden
        The patient has no phone on record (staff must record the consent in person).
    InvalidQuery
        Unknown institution, a period or scope out of bounds.
    NotifyFailed
        The text message could not be sent (the consent is dropped).
    """
    institution_pk, name = _institution(archive, institution)
    platform_pk = _platform_patient(archive, study_uid)
    if study_uids is not None:
        _check_scope(archive, platform_pk, study_uids)
    phone, hint = pix.phone_of(archive, platform_pk)
    if phone is None:
        raise Forbidden(
            "no mobile phone is on record for this patient: ask the hospital's staff to "
            "record the consent in person"
        )
    code = f"{secrets.randbelow(1_000_000):06d}"
    consent_id = _new_consent(
        archive, platform_pk, institution_pk, username=username, study_uids=study_uids,
        days=days, created_by=created_by, state="pending", code=code,
    )  # fmt: skip
    minutes = archive.settings.consent_code_minutes
    text = (
        f"【云胶片】验证码 {code}：授权{name}查看您的影像检查（{days}天）。{minutes}分钟内有效，"
        f"非本人操作请忽略。 cloudfilm code {code}: lets {name} see your imaging exams for "
        f"{days} days. Valid {minutes} minutes."
    )
    try:
        notifier_for(archive).send(phone, text)
    except Exception:
        with archive.engine.begin() as conn:
            conn.execute(update(Consent).where(Consent.id == consent_id).values(state="refused"))
        raise
    return get(archive, consent_id), hint


def confirm(archive: Archive, consent_id: str, code: str, *, created_by: str) -> ConsentInfo:
    """Make a pending consent active with the code sent to the patient's phone.

    The attempt is counted before the code is compared (in one UPDATE), so racing guesses
    cannot exceed ``consent_code_attempts``.

    Raises
    ------
    NotFound
        No pending consent with this id asked from this link (``created_by``).
    Gone
        The code lapsed, or too many wrong codes were entered (the consent is refused).
    InvalidQuery
        A wrong code (attempts are left).
    """
    settings = archive.settings
    now = utcnow()
    cleaned = "".join(ch for ch in code if not ch.isspace())
    with archive.engine.begin() as conn:
        row = conn.execute(
            select(Consent.state, Consent.code_hmac, Consent.code_expires_at,
                   Consent.code_failures)
            .where(Consent.id == consent_id, Consent.created_by == created_by)
        ).first()  # fmt: skip
        if row is None or row[0] != "pending":
            raise NotFound("no consent waiting for a code")
        if row[2] is None or _aware(row[2]) < now:
            conn.execute(update(Consent).where(Consent.id == consent_id).values(state="refused"))
            raise Gone("the code has lapsed: ask for the consent again")
        counted = conn.execute(
            update(Consent)
            .where(
                Consent.id == consent_id,
                Consent.state == "pending",
                Consent.code_failures < settings.consent_code_attempts,
            )
            .values(code_failures=Consent.code_failures + 1)
        )
    if not counted.rowcount:
        _refuse(archive, consent_id)
        raise Gone("too many wrong codes: ask for the consent again")
    right = row[1] is not None and hmac.compare_digest(
        row[1], _code_hmac(archive, consent_id, cleaned)
    )
    if right:
        with archive.engine.begin() as conn:
            conn.execute(
                update(Consent)
                .where(Consent.id == consent_id, Consent.state == "pending")
                .values(state="active", confirmed_via="code", confirmed_at=now, code_hmac=None,
                        code_failures=Consent.code_failures - 1)
            )  # fmt: skip
        return get(archive, consent_id)
    with archive.engine.connect() as conn:
        failures = conn.execute(
            select(Consent.code_failures).where(Consent.id == consent_id)
        ).scalar_one()
    left = settings.consent_code_attempts - int(failures)
    if left <= 0:
        _refuse(archive, consent_id)
        raise Gone("too many wrong codes: ask for the consent again")
    raise InvalidQuery(f"the code is not right ({left} attempts left)")


def _refuse(archive: Archive, consent_id: str) -> None:
    with archive.engine.begin() as conn:
        conn.execute(
            update(Consent)
            .where(Consent.id == consent_id, Consent.state == "pending")
            .values(state="refused", code_hmac=None)
        )


def record_by_staff(
    archive: Archive,
    study_uid: str,
    *,
    institution: str,
    username: str | None,
    study_uids: list[str] | None,
    days: int,
    staff: str,
) -> ConsentInfo:
    """An active consent the patient gave in person, recorded by staff (``staff``: their
    label) for the patient of ``study_uid``."""
    institution_pk, _name = _institution(archive, institution)
    platform_pk = _platform_patient(archive, study_uid)
    if study_uids is not None:
        _check_scope(archive, platform_pk, study_uids)
    consent_id = _new_consent(
        archive, platform_pk, institution_pk, username=username, study_uids=study_uids,
        days=days, created_by=staff, state="active", confirmed_via=f"{staff}"[:200],
    )  # fmt: skip
    return get(archive, consent_id)


def withdraw(archive: Archive, consent_id: str, *, platform_pk: int | None = None) -> ConsentInfo:
    """End a consent at once (of ``platform_pk`` when given: the patient's own only)."""
    stmt = update(Consent).where(Consent.id == consent_id, Consent.state.in_(("pending", "active")))
    if platform_pk is not None:
        stmt = stmt.where(Consent.platform_patient_pk == platform_pk)
    with archive.engine.begin() as conn:
        done = conn.execute(stmt.values(state="withdrawn", withdrawn_at=utcnow(), code_hmac=None))
    if not done.rowcount:
        info = get(archive, consent_id)  # NotFound when there is none
        if platform_pk is not None and not _of_patient(archive, consent_id, platform_pk):
            raise NotFound("no such consent")
        raise Conflict(f"the consent is already {info.state}")
    return get(archive, consent_id)


def _of_patient(archive: Archive, consent_id: str, platform_pk: int) -> bool:
    with archive.engine.connect() as conn:
        return bool(
            conn.execute(
                select(Consent.pk).where(
                    Consent.id == consent_id, Consent.platform_patient_pk == platform_pk
                )
            ).first()
        )


def get(archive: Archive, consent_id: str) -> ConsentInfo:
    found = _list(archive, Consent.id == consent_id)
    if not found:
        raise NotFound("no such consent")
    return found[0]


def consents_for_study(archive: Archive, study_uid: str) -> tuple[int | None, list[ConsentInfo]]:
    """The platform patient of the study (None when not linked) and its consents, newest
    first (all states)."""
    with archive.engine.connect() as conn:
        platform_pk = pix.platform_patient_of_study(conn, study_uid)
    if platform_pk is None:
        return None, []
    return platform_pk, _list(archive, Consent.platform_patient_pk == platform_pk)


def _list(archive: Archive, condition: Any) -> list[ConsentInfo]:
    with archive.sessions() as session:
        rows = session.execute(
            select(Consent, Institution.code, Institution.name)
            .join(Institution, Institution.pk == Consent.grantee_institution_pk)
            .where(condition)
            .order_by(Consent.created_at.desc(), Consent.pk.desc())
        ).all()
        found = []
        for consent, code, name in rows:
            uids = session.execute(
                select(ConsentStudy.study_uid).where(ConsentStudy.consent_pk == consent.pk)
            ).scalars()
            found.append(
                ConsentInfo(
                    consent.id, code, name or code, consent.grantee_username, consent.all_exams,
                    tuple(sorted(uids)), consent.state, consent.expires_at, consent.created_at,
                    consent.confirmed_via, consent.created_by,
                )
            )  # fmt: skip
        return found


# ------------------------------------------------------------------------------ seeing


def consent_condition(institution_pk: int, username: str | None, now: datetime) -> Any:
    """A condition on ``Study``: an active consent of its patient covers it for the
    institution (and, for a consent naming one doctor, that user)."""
    grantee: ColumnElement[bool] = Consent.grantee_username.is_(None)
    if username is not None:
        grantee = or_(grantee, Consent.grantee_username == username)
    return exists().where(
        PatientLink.patient_pk == Study.patient_pk,
        Consent.platform_patient_pk == PatientLink.platform_patient_pk,
        Consent.grantee_institution_pk == institution_pk,
        Consent.state == "active",
        Consent.expires_at > now,
        grantee,
        or_(
            Consent.all_exams,
            Study.study_uid.in_(
                select(ConsentStudy.study_uid).where(ConsentStudy.consent_pk == Consent.pk)
            ),
        ),
    )


def consent_sees(engine: Engine, institution_pk: int, username: str | None, study_uid: str) -> bool:
    """Whether an active consent covers the study for the institution (and user)."""
    stmt = select(
        exists().where(
            Study.study_uid == study_uid, consent_condition(institution_pk, username, utcnow())
        )
    )
    with engine.connect() as conn:
        return bool(conn.execute(stmt).scalar())


def platform_patient_id(archive: Archive, platform_pk: int) -> str:
    with archive.engine.connect() as conn:
        return str(
            conn.execute(
                select(PlatformPatient.id).where(PlatformPatient.pk == platform_pk)
            ).scalar_one()
        )
