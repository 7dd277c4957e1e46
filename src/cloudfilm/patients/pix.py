"""Cross-references between institutions' patient IDs and one platform patient (IHE PIX
ideas).

Each index patient — a Patient ID with its Issuer of Patient ID, as an institution sent it —
may be linked to one **platform patient**. Links are made

* at ingest (``dicom``), from a **strong key**: an Other Patient IDs Sequence (0010,1002) item
  whose Issuer of Patient ID is one of ``pix_strong_key_issuers`` (by default ``CN-NID``, the
  resident identity card number). Two institutions' patients with the same strong key are
  the same platform patient. Never on the name, birth date or anything weaker;
* by the identity feed (``feed``, REST ``POST /api/pix/links``) or by staff (``staff``,
  ``cloudfilm patients link``), with a strong key, or to a named platform patient.

The strong key is never stored: only an HMAC-SHA256 of its normalised form under a key
derived from the server secret, so the table cannot be searched for a known ID number
without the secret. Staff correct links (``link`` replaces one), ``split`` a patient off
into a platform patient of its own and ``merge`` two platform patients (links and consents
move to the one kept). The phone number one-time codes go to is kept sealed with the server
key (from Patient's Telephone Numbers (0010,2154) at ingest when none is on record, or from
the feed and staff, which win).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import Forbidden, InvalidQuery, NotFound
from cloudfilm.index.models import (
    Consent,
    Institution,
    Patient,
    PatientLink,
    PlatformPatient,
    Study,
    StudyAccess,
    utcnow,
)
from cloudfilm.sharing.crypto import ShareKeys, derive_key

logger = logging.getLogger(__name__)

__all__ = [
    "LinkedPatient",
    "PlatformPatientInfo",
    "link",
    "link_at_ingest",
    "merge",
    "normalize_phone",
    "patient_info",
    "phone_of",
    "platform_id_of",
    "platform_patient_of_study",
    "recent_links",
    "split",
    "strong_key_hmac",
]

_PHONE = re.compile(r"^\+?[0-9]{6,20}$")
_PHONE_CONTEXT = "cloudfilm patient phone v1"


@dataclass(frozen=True)
class LinkedPatient:
    """One institution patient linked to a platform patient."""

    patient_id: str
    issuer: str
    name: str | None
    source: str
    #: Codes of the institutions that own or hold studies of this patient.
    institutions: tuple[str, ...]
    studies: int


@dataclass(frozen=True)
class LinkRow:
    """One cross-reference, for the staff review list (newest first)."""

    patient_id: str
    issuer: str
    name: str | None
    platform_id: str
    source: str
    created_by: str
    created_at: datetime
    #: How many index patients (Patient ID with issuer) the platform patient has.
    linked: int


@dataclass(frozen=True)
class PlatformPatientInfo:
    id: str
    has_strong_key: bool
    phone_hint: str
    links: tuple[LinkedPatient, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "has_strong_key": self.has_strong_key,
            "phone_hint": self.phone_hint,
            "links": [
                vars(link) | {"institutions": list(link.institutions)} for link in self.links
            ],
        }


def strong_key_hmac(settings: Settings, value: str) -> str:
    """The keyed hash of a strong key: spaces and hyphens dropped, upper case."""
    normalized = re.sub(r"[\s\-]", "", value).upper()
    if not normalized or len(normalized) > 64:
        raise InvalidQuery("a strong key has 1 to 64 characters")
    key = derive_key(settings.secret_key, b"cloudfilm pix strong key v1")
    return hmac.new(key, normalized.encode("utf-8"), hashlib.sha256).hexdigest()


def normalize_phone(text: str) -> str | None:
    """A phone number as ``+`` and digits (separators dropped); None if it is not one."""
    compact = re.sub(r"[\s\-().]", "", text or "")
    return compact if _PHONE.match(compact) else None


def _sealer(settings: Settings) -> ShareKeys:
    return ShareKeys(settings.secret_key)


def _strong_key(settings: Settings, other_ids: Sequence[tuple[str, str, str]]) -> str | None:
    issuers = {i.strip().upper() for i in settings.pix_strong_key_issuers}
    for value, issuer, _type in other_ids:
        if issuer.strip().upper() in issuers:
            try:
                return strong_key_hmac(settings, value)
            except InvalidQuery:
                continue
    return None


def link_at_ingest(
    conn: Connection,
    patient_pk: int,
    other_ids: Sequence[tuple[str, str, str]],
    telephone: str | None,
    settings: Settings,
) -> None:
    """Link a patient as it arrives, when it carries a strong key and has no link yet (a
    link staff or the feed made is never changed here). Runs in the store's transaction."""
    digest = _strong_key(settings, other_ids)
    if digest is None:
        return
    if conn.execute(
        select(PatientLink.platform_patient_pk).where(PatientLink.patient_pk == patient_pk)
    ).first():
        return
    target = _platform_by_key(conn, digest)
    if target is None:
        target = _new_platform_patient(conn, digest)
    conn.execute(
        insert(PatientLink).values(
            patient_pk=patient_pk, platform_patient_pk=target, source="dicom",
            created_by="ingest", created_at=utcnow(),
        )
    )  # fmt: skip
    phone = normalize_phone(telephone or "")
    if phone:
        _set_phone(conn, target, phone, settings, only_if_empty=True)


def _platform_by_key(conn: Connection, digest: str) -> int | None:
    found = conn.execute(
        select(PlatformPatient.pk, PlatformPatient.merged_into_pk).where(
            PlatformPatient.strong_key_hmac == digest
        )
    ).first()
    if found is None:
        return None
    return found[1] or found[0]


def _new_platform_patient(conn: Connection, digest: str | None) -> int:
    """A new platform patient (another process making the same one at once wins)."""
    values = {"id": secrets.token_hex(8), "strong_key_hmac": digest, "phone_hint": "",
              "created_at": utcnow()}  # fmt: skip
    try:
        with conn.begin_nested():
            created = conn.execute(insert(PlatformPatient).values(**values)).inserted_primary_key
            assert created is not None
            return int(created[0])
    except IntegrityError:
        if digest is None:
            raise
        found = _platform_by_key(conn, digest)
        assert found is not None
        return found


def _set_phone(
    conn: Connection, pk: int, phone: str, settings: Settings, *, only_if_empty: bool = False
) -> None:
    stmt = update(PlatformPatient).where(PlatformPatient.pk == pk)
    if only_if_empty:
        stmt = stmt.where(PlatformPatient.phone_sealed.is_(None))
    conn.execute(
        stmt.values(
            phone_sealed=_sealer(settings).seal(phone, _PHONE_CONTEXT), phone_hint=phone[-4:]
        )
    )


def _index_patient(conn: Connection, patient_id: str, issuer: str) -> int:
    pk = conn.execute(
        select(Patient.pk).where(Patient.patient_id == patient_id, Patient.issuer == issuer)
    ).scalar()
    if pk is None:
        raise NotFound(f"no patient {patient_id!r} (issuer {issuer!r}) in the archive")
    return int(pk)


def _platform_pk(conn: Connection, platform_id: str) -> int:
    found = conn.execute(
        select(PlatformPatient.pk, PlatformPatient.merged_into_pk).where(
            PlatformPatient.id == platform_id
        )
    ).first()
    if found is None:
        raise NotFound(f"no platform patient {platform_id}")
    return int(found[1] or found[0])


def link(
    archive: Archive,
    patient_id: str,
    issuer: str = "",
    *,
    strong_key: str | None = None,
    platform_id: str | None = None,
    phone: str | None = None,
    source: str = "staff",
    created_by: str = "",
    phone_institution: int | None = None,
) -> PlatformPatientInfo:
    """Link (or re-link) an index patient: to the platform patient of ``strong_key`` (made
    when new), or to ``platform_id``; with neither, keep its link (made new when none) and
    only set the phone.

    With ``phone_institution`` (the caller's institution, for staff), a phone already on
    record is replaced only when that institution alone holds the person's studies; otherwise
    nothing changes and ``Forbidden`` says why.

    Raises
    ------
    NotFound
        No such patient in the archive, or no such platform patient.
    InvalidQuery
        Both a strong key and a platform patient given, a malformed key or phone.
    """
    if strong_key is not None and platform_id is not None:
        raise InvalidQuery("give a strong key or a platform patient, not both")
    wanted_phone = None
    if phone is not None:
        wanted_phone = normalize_phone(phone)
        if wanted_phone is None:
            raise InvalidQuery("phone: digits, optionally after +, 6 to 20 of them")
    settings = archive.settings
    with archive.engine.begin() as conn:
        patient_pk = _index_patient(conn, patient_id, issuer)
        current = conn.execute(
            select(PatientLink.platform_patient_pk).where(PatientLink.patient_pk == patient_pk)
        ).scalar()
        if strong_key is not None:
            digest = strong_key_hmac(settings, strong_key)
            target = _platform_by_key(conn, digest)
            if target is None and current is not None and _key_of(conn, current) is None:
                conn.execute(  # the patient's platform patient gets the key it lacked
                    update(PlatformPatient)
                    .where(PlatformPatient.pk == current)
                    .values(strong_key_hmac=digest)
                )
                target = current
            elif target is None:
                target = _new_platform_patient(conn, digest)
        elif platform_id is not None:
            target = _platform_pk(conn, platform_id)
        else:
            target = current if current is not None else _new_platform_patient(conn, None)
        if current is None:
            conn.execute(
                insert(PatientLink).values(
                    patient_pk=patient_pk, platform_patient_pk=target, source=source,
                    created_by=created_by[:200], created_at=utcnow(),
                )
            )  # fmt: skip
        elif current != target:
            conn.execute(
                update(PatientLink)
                .where(PatientLink.patient_pk == patient_pk)
                .values(
                    platform_patient_pk=target,
                    source=source,
                    created_by=created_by[:200],
                    created_at=utcnow(),
                )
            )
        if wanted_phone:
            if phone_institution is not None and _phone_of_others(conn, target, phone_institution):
                raise Forbidden(
                    "other hospitals hold this person's exams too: the phone on record, where "
                    "their consent codes go, is changed by the platform administrator"
                )
            _set_phone(conn, target, wanted_phone, settings)
        public_id = conn.execute(
            select(PlatformPatient.id).where(PlatformPatient.pk == target)
        ).scalar_one()
    logger.info("patient %s (issuer %r) linked to %s by %s", patient_id, issuer, public_id,
                created_by or source)  # fmt: skip
    return patient_info(archive, public_id)


def _phone_of_others(conn: Connection, platform_pk: int, institution_pk: int) -> bool:
    """Whether the platform patient has a phone on record and a study that another
    institution than ``institution_pk`` owns or holds."""
    has_phone = conn.execute(
        select(PlatformPatient.phone_sealed).where(PlatformPatient.pk == platform_pk)
    ).scalar()
    if not has_phone:
        return False
    other = conn.execute(
        select(StudyAccess.study_pk)
        .join(Study, Study.pk == StudyAccess.study_pk)
        .join(PatientLink, PatientLink.patient_pk == Study.patient_pk)
        .where(
            PatientLink.platform_patient_pk == platform_pk,
            StudyAccess.institution_pk != institution_pk,
        )
        .limit(1)
    ).first()
    return other is not None


def _key_of(conn: Connection, pk: int) -> str | None:
    return conn.execute(
        select(PlatformPatient.strong_key_hmac).where(PlatformPatient.pk == pk)
    ).scalar()


def split(archive: Archive, patient_id: str, issuer: str = "", *, created_by: str = "") -> str:
    """Give a wrongly linked patient a platform patient of its own (without strong key);
    returns its id. Consents stay with the platform patient they were given for."""
    with archive.engine.begin() as conn:
        patient_pk = _index_patient(conn, patient_id, issuer)
        target = _new_platform_patient(conn, None)
        conn.execute(
            update(PatientLink)
            .where(PatientLink.patient_pk == patient_pk)
            .values(
                platform_patient_pk=target,
                source="staff",
                created_by=created_by[:200],
                created_at=utcnow(),
            )
        )
        if not conn.execute(
            select(PatientLink.patient_pk).where(PatientLink.patient_pk == patient_pk)
        ).first():
            conn.execute(
                insert(PatientLink).values(
                    patient_pk=patient_pk, platform_patient_pk=target, source="staff",
                    created_by=created_by[:200], created_at=utcnow(),
                )
            )  # fmt: skip
        public_id = conn.execute(
            select(PlatformPatient.id).where(PlatformPatient.pk == target)
        ).scalar_one()
    return str(public_id)


def merge(archive: Archive, source_id: str, target_id: str) -> PlatformPatientInfo:
    """Merge platform patient ``source_id`` into ``target_id``: its links and consents move,
    it is kept (marked merged) so that its id still leads to the person."""
    with archive.engine.begin() as conn:
        source = _platform_pk(conn, source_id)
        target = _platform_pk(conn, target_id)
        if source == target:
            raise InvalidQuery("a platform patient cannot be merged into itself")
        conn.execute(
            update(PatientLink)
            .where(PatientLink.platform_patient_pk == source)
            .values(platform_patient_pk=target)
        )
        conn.execute(
            update(Consent)
            .where(Consent.platform_patient_pk == source)
            .values(platform_patient_pk=target)
        )
        conn.execute(
            update(PlatformPatient)
            .where(PlatformPatient.merged_into_pk == source)
            .values(merged_into_pk=target)
        )
        key = _key_of(conn, source)
        conn.execute(
            update(PlatformPatient)
            .where(PlatformPatient.pk == source)
            .values(merged_into_pk=target, strong_key_hmac=None)
        )
        if key is not None and _key_of(conn, target) is None:
            conn.execute(
                update(PlatformPatient)
                .where(PlatformPatient.pk == target)
                .values(strong_key_hmac=key)
            )
    return patient_info(archive, target_id)


def patient_info(archive: Archive, platform_id: str) -> PlatformPatientInfo:
    """A platform patient and its links (with the institutions that see each patient)."""
    with archive.engine.connect() as conn:
        pk = _platform_pk(conn, platform_id)
        row = conn.execute(
            select(PlatformPatient.id, PlatformPatient.strong_key_hmac, PlatformPatient.phone_hint)
            .where(PlatformPatient.pk == pk)
        ).one()  # fmt: skip
        links = conn.execute(
            select(Patient.pk, Patient.patient_id, Patient.issuer, Patient.patient_name,
                   PatientLink.source)
            .join(PatientLink, PatientLink.patient_pk == Patient.pk)
            .where(PatientLink.platform_patient_pk == pk)
            .order_by(Patient.patient_id, Patient.issuer)
        ).all()  # fmt: skip
        linked = []
        for patient_pk, patient_id, issuer, name, source in links:
            codes = conn.execute(
                select(Institution.code)
                .join(StudyAccess, StudyAccess.institution_pk == Institution.pk)
                .join(Study, Study.pk == StudyAccess.study_pk)
                .where(Study.patient_pk == patient_pk)
                .distinct()
                .order_by(Institution.code)
            ).scalars()
            count = conn.execute(
                select(func.count(Study.pk)).where(Study.patient_pk == patient_pk)
            ).scalar_one()
            linked.append(LinkedPatient(patient_id, issuer, name, source, tuple(codes), int(count)))
    return PlatformPatientInfo(str(row[0]), row[1] is not None, str(row[2] or ""), tuple(linked))


def platform_patient_of_study(conn: Connection, study_uid: str) -> int | None:
    """The platform patient a study's patient is linked to (None when not linked)."""
    found = conn.execute(
        select(PatientLink.platform_patient_pk)
        .join(Study, Study.patient_pk == PatientLink.patient_pk)
        .where(Study.study_uid == study_uid)
    ).scalar()
    return int(found) if found is not None else None


def phone_of(archive: Archive, platform_pk: int) -> tuple[str | None, str]:
    """The platform patient's phone on record (None when none) and its last digits."""
    with archive.engine.connect() as conn:
        sealed, hint = conn.execute(
            select(PlatformPatient.phone_sealed, PlatformPatient.phone_hint).where(
                PlatformPatient.pk == platform_pk
            )
        ).one()
    if not sealed:
        return None, ""
    return _sealer(archive.settings).unseal(sealed, _PHONE_CONTEXT), str(hint or "")


def platform_id_of(archive: Archive, patient_id: str, issuer: str = "") -> str | None:
    """The public id of the platform patient an index patient is linked to (None: no link).

    Raises ``NotFound`` when the archive has no such patient."""
    with archive.engine.connect() as conn:
        patient_pk = _index_patient(conn, patient_id, issuer)
        found = conn.execute(
            select(PlatformPatient.id)
            .join(PatientLink, PatientLink.platform_patient_pk == PlatformPatient.pk)
            .where(PatientLink.patient_pk == patient_pk)
        ).scalar()
    return str(found) if found is not None else None


def recent_links(
    archive: Archive, institution_pk: int | None, *, limit: int, offset: int = 0
) -> list[LinkRow]:
    """Cross-references, newest first: of the patients with a study ``institution_pk`` owns
    or holds, or all of them (``None``, the platform administrator)."""
    other = aliased(PatientLink)
    linked = (
        select(func.count())
        .select_from(other)
        .where(other.platform_patient_pk == PlatformPatient.pk)
        .correlate(PlatformPatient)
        .scalar_subquery()
    )
    query = (
        select(
            Patient.patient_id, Patient.issuer, Patient.patient_name, PlatformPatient.id,
            PatientLink.source, PatientLink.created_by, PatientLink.created_at, linked,
        )
        .join(PatientLink, PatientLink.patient_pk == Patient.pk)
        .join(PlatformPatient, PlatformPatient.pk == PatientLink.platform_patient_pk)
        .order_by(PatientLink.created_at.desc(), Patient.pk.desc())
        .limit(limit)
        .offset(offset)
    )  # fmt: skip
    if institution_pk is not None:
        query = query.where(
            select(StudyAccess.study_pk)
            .join(Study, Study.pk == StudyAccess.study_pk)
            .where(Study.patient_pk == Patient.pk, StudyAccess.institution_pk == institution_pk)
            .exists()
        )
    with archive.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        LinkRow(
            patient_id=row[0],
            issuer=row[1],
            name=row[2],
            platform_id=str(row[3]),
            source=row[4],
            created_by=row[5],
            created_at=_utc(row[6]),
            linked=int(row[7]),
        )
        for row in rows
    ]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
