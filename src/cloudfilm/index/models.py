"""The index: Patient / Study / Series / Instance tables.

Each level holds the attributes that QIDO-RS (PS3.18 Table 10.6.1-5) and C-FIND (PS3.4 C.6)
match on or return, decoded to Unicode with the data set's Specific Character Set. Study and
series rows also hold derived values (modalities, counts, size) that the archive keeps right as
instances come and go. Dates are kept as DICOM ``YYYYMMDD`` strings, so that range matching is a
string comparison; Person Names keep their full ``=``-separated value and a search key.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_id_issuer"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Patient ID (0010,0020), '' when absent.
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    #: Issuer of Patient ID (0010,0021), '' when absent.
    issuer: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str | None] = mapped_column(String(400))
    patient_name_key: Mapped[str] = mapped_column(String(400), default="||", index=True)
    birth_date: Mapped[str | None] = mapped_column(String(8))
    sex: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "study"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.pk"), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_id: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(400))
    referring_physician_name: Mapped[str | None] = mapped_column(String(400))
    institution_name: Mapped[str | None] = mapped_column(String(400))
    timezone_offset: Mapped[str | None] = mapped_column(String(16))
    #: Modalities in Study (0008,0061), backslash-separated, sorted; derived.
    modalities: Mapped[str] = mapped_column(String(200), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: When an instance last arrived (or was removed): automatic cloud films wait for it to
    #: be ``auto_share_stable_seconds`` old (indexed for that scan).
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.pk"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(400))
    body_part: Mapped[str | None] = mapped_column(String(64))
    station_name: Mapped[str | None] = mapped_column(String(64))
    performed_start_date: Mapped[str | None] = mapped_column(String(8))
    performed_start_time: Mapped[str | None] = mapped_column(String(16))
    #: Request Attributes Sequence items (Requested Procedure ID, Scheduled Procedure Step ID).
    request_attributes: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instance"
    __table_args__ = (
        Index("ix_instance_series_number", "series_pk", "instance_number"),
        # The virtual printer's match: what an AE sent lately (``cloudfilm.film.printed``).
        Index("ix_instance_source_received", "source", "received_at"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.pk"))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    bits_allocated: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    #: Key of the Part 10 blob in the blob store.
    blob_key: Mapped[str] = mapped_column(String(200), unique=True)
    #: Size of the blob in bytes and its SHA-256 (hex).
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    #: Offset in the blob of the first byte after the File Meta Information (group 0002).
    dataset_offset: Mapped[int] = mapped_column(Integer)
    #: True when the blob is the file exactly as received (preamble and meta included).
    received_whole: Mapped[bool] = mapped_column(default=False)
    #: DICOM JSON (PS3.18 F.2) of the header, without pixel data; bulk data as BulkDataURI.
    header_json: Mapped[str] = mapped_column(Text)
    #: Where it came from: "import", "stow", "dimse:AET", ...; a film sheet "film" (composed
    #: in cloudfilm) or "print:AET" (printed to the virtual printer by that AE).
    source: Mapped[str | None] = mapped_column(String(100))
    #: Film Size ID (2010,0050) of a film sheet, e.g. ``14INX17IN``; None for anything else
    #: (``cloudfilm.film.sheets``, counted by ``cloudfilm.film.stats``).
    film_size: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class PendingDelete(Base):
    """Blobs whose index rows are gone (deleted or replaced) and that are still to be removed.

    Written in the same transaction that removes the rows, so that a crash between that commit
    and the blob deletion leaves a record: ``cloudfilm check --repair`` then removes the blob
    instead of re-indexing it.
    """

    __tablename__ = "pending_delete"

    blob_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DimsePeer(Base):
    """A known remote DICOM application entity (``cloudfilm peers``; see docs/dimse.md).

    Calls are accepted from it only from ``allowed_from`` (host names, addresses or CIDR
    blocks; empty means its ``host``), and it may use only the services it is allowed.
    """

    __tablename__ = "dimse_peer"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: AE title (PS3.5 VR AE, 16 characters at most), without padding.
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    allowed_from: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(String(400), default="")
    #: The institution whose studies arrive from it (free text for now).
    institution: Mapped[str] = mapped_column(String(200), default="")
    #: Department of that institution (e.g. ``radiology``), for the figures of film saved.
    department: Mapped[str] = mapped_column(String(200), default="")
    can_store: Mapped[bool] = mapped_column(default=False)
    can_query: Mapped[bool] = mapped_column(default=False)
    can_retrieve: Mapped[bool] = mapped_column(default=False)
    #: May print to the virtual film printer (``cloudfilm.dimse.printing``).
    can_print: Mapped[bool] = mapped_column(default=False)
    #: Only over DICOM TLS, both ways (``cloudfilm.dimse.tls``).
    tls: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DurableJob:
    """Columns of a job kept in the index and worked by background threads, with retries.

    ``state`` is ``pending`` (due at ``next_attempt_at``), ``running`` (claimed by
    ``claimed_by`` until ``locked_until``; a claim that lapses, because its process died, is
    taken again), ``done``, ``failed`` (no attempts left, or hopeless) or ``cancelled``. See
    ``cloudfilm.dimse.jobs``.
    """

    state: Mapped[str] = mapped_column(String(16), default="pending")
    #: Attempts made so far (counted when an attempt starts).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str] = mapped_column(String(400), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DimseCommitment(DurableJob, Base):
    """A Storage Commitment request (PS3.4 J.3) and the delivery of its N-EVENT-REPORT."""

    __tablename__ = "dimse_commitment"
    __table_args__ = (
        UniqueConstraint("calling_ae", "transaction_uid", name="uq_dimse_commitment_transaction"),
        Index("ix_dimse_commitment_due", "state", "next_attempt_at"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Transaction UID (0008,1195) of the N-ACTION request.
    transaction_uid: Mapped[str] = mapped_column(String(64))
    #: The peer that asked, and that the report goes to.
    calling_ae: Mapped[str] = mapped_column(String(16))
    #: Referenced SOP Sequence (0008,1199): ``[[SOP Class UID, SOP Instance UID], ...]``.
    references: Mapped[list[list[str]]] = mapped_column(JSON)
    #: Event Type ID of the last report sent or tried: 1 all committed, 2 some failed.
    event_type: Mapped[int | None] = mapped_column(Integer)
    #: Items in the Failed SOP Sequence of that report.
    failed_count: Mapped[int] = mapped_column(Integer, default=0)


class DimseForward(DurableJob, Base):
    """One instance to send to a peer, queued by a routing rule (``dimse_routes``)."""

    __tablename__ = "dimse_forward"
    __table_args__ = (
        Index("ix_dimse_forward_due", "state", "next_attempt_at"),
        Index("ix_dimse_forward_destination", "destination", "state"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: AE title of the known peer it goes to.
    destination: Mapped[str] = mapped_column(String(16))
    study_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    #: Where the instance came from ("dimse:CT1", "stow", "import") and the rule that matched.
    source: Mapped[str] = mapped_column(String(100), default="")
    rule: Mapped[str] = mapped_column(String(200), default="")


class FilmPrint(DurableJob, Base):
    """A film sheet to print on real film, on a film printer that is a known peer (Print SCU,
    ``cloudfilm.film.passthrough``): queued by a pass-through rule when a modality printed
    to the virtual printer, or by staff for a patient who still wants film.

    The sheet is a stored film sheet (``study_uid`` and ``sop_instance_uid``) or a sheet
    still waiting in the unmatched list (``printed_film_pk``).
    """

    __tablename__ = "film_print"
    __table_args__ = (Index("ix_film_print_due", "state", "next_attempt_at"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: AE title of the film printer (a known peer).
    printer: Mapped[str] = mapped_column(String(16))
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    printed_film_pk: Mapped[int | None] = mapped_column(Integer)
    #: Code of the institution the sheet belongs to ('' when none), for the film figures.
    institution: Mapped[str] = mapped_column(String(64), default="")
    #: Film Size ID (2010,0050) the sheet is printed on, e.g. ``14INX17IN``.
    film_size: Mapped[str] = mapped_column(String(16), default="")
    copies: Mapped[int] = mapped_column(Integer, default=1)
    #: Who asked: ``rule:<calling AE>`` or ``staff:<username>``.
    requested_by: Mapped[str] = mapped_column(String(200), default="")


class PrintedFilm(Base):
    """A sheet printed to the virtual film printer that was not matched to a study with
    enough confidence (``cloudfilm.film.printed``): kept until staff attach it to one.

    The sheet itself is a PNG blob (``blob_key``) at ``dpi``; the row keeps what the print
    request said and the studies that were candidates.
    """

    __tablename__ = "printed_film"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    calling_ae: Mapped[str] = mapped_column(String(16), index=True)
    #: Code of the calling peer's institution, '' when none.
    institution: Mapped[str] = mapped_column(String(64), default="")
    #: Film Session Label (2000,0050) of the print request.
    film_session_label: Mapped[str] = mapped_column(String(64), default="")
    #: Study Instance UIDs that were candidates (most likely first).
    candidates: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Why the sheet was not matched.
    reason: Mapped[str] = mapped_column(String(200), default="")
    blob_key: Mapped[str] = mapped_column(String(200), unique=True)
    display_format: Mapped[str] = mapped_column(String(64))
    film_size: Mapped[str] = mapped_column(String(16))
    orientation: Mapped[str] = mapped_column(String(16))
    dpi: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer, default=0)
    annotated: Mapped[bool] = mapped_column(default=False)
    #: Set when staff attached the sheet to a study.
    attached_study_uid: Mapped[str | None] = mapped_column(String(64))
    attached_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    attached_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Share(Base):
    """A cloud film: a link that reaches some studies of one patient (see docs/sharing.md).

    The token itself is never stored: only its SHA-256 (for look-up) and a copy sealed with the
    server key (AES-GCM, for reprinting a card); a copy of the database without the key yields
    no usable link. ``secret_hash`` is the argon2 hash of what the holder must enter first: the
    access code, or the patient's birth date or the last characters of the Patient ID.
    """

    __tablename__ = "share"

    #: Random public identifier (16 hex characters), used by staff and in the access log.
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    #: SHA-256 (hex) of the URL token.
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    #: The token sealed with the server key: base64url(nonce + AES-GCM ciphertext).
    token_sealed: Mapped[str] = mapped_column(String(200))
    #: The share this one was made from by its holder (a reshare), or None (issued by staff).
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("share.id", ondelete="CASCADE"), index=True
    )
    #: The patient (Patient ID and issuer); None while only an accession number is known.
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    issuer: Mapped[str | None] = mapped_column(String(64))
    #: Accession number the share was issued for; ``pending`` until its study arrives.
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    pending: Mapped[bool] = mapped_column(default=False)
    #: Comma-separated permissions: ``view`` and any of ``download``, ``reshare``.
    permissions: Mapped[str] = mapped_column(String(64), default="view")
    #: What must be entered first: ``none``, ``code``, ``birth-date`` or ``id-suffix``.
    secret_kind: Mapped[str] = mapped_column(String(16), default="none")
    #: argon2 hash of the normalised code or patient-check answer.
    secret_hash: Mapped[str | None] = mapped_column(String(200))
    #: The access code sealed with the server key (so that a card can be reprinted).
    code_sealed: Mapped[str | None] = mapped_column(String(200))
    #: Short free text shown to the holder, e.g. the doctor's name for a reshare.
    label: Mapped[str] = mapped_column(String(200), default="")
    note: Mapped[str] = mapped_column(String(1000), default="")
    #: Who issued it: a staff principal ("development:dev", "cli") or ``share:<id>``.
    created_by: Mapped[str] = mapped_column(String(200), default="")
    #: The issuer's institution; an accession number names only its studies. None: the
    #: platform, the CLI or development (every study).
    institution_pk: Mapped[int | None] = mapped_column(
        ForeignKey("institution.pk", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    studies: Mapped[list[ShareStudy]] = relationship(
        back_populates="share", cascade="all, delete-orphan"
    )


class ShareStudy(Base):
    """A study a share reaches, by Study Instance UID (no foreign key: deleting a study from
    the archive must not be blocked by a share, and a re-sent study is reached again)."""

    __tablename__ = "share_study"

    share_id: Mapped[str] = mapped_column(
        ForeignKey("share.id", ondelete="CASCADE"), primary_key=True
    )
    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)

    share: Mapped[Share] = relationship(back_populates="studies")


class ShareLockout(Base):
    """Failed code or patient-check attempts, counted per share and per client address.

    Kept in the index so that every server process sees the same counts.
    """

    __tablename__ = "share_lockout"

    #: ``share`` or ``client``.
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    #: The share id, or the client address (IPv6 reduced to its /64 network).
    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    #: Start of the current counting window (failures older than the lockout period lapse).
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ShareAccess(Base):
    """One opening, download or renewal of a share ("who opened my images").

    The client address is kept only to its /24 (IPv4) or /48 (IPv6) network.
    """

    __tablename__ = "share_access"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    share_id: Mapped[str] = mapped_column(ForeignKey("share.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: ``open``, ``download`` or ``renew``.
    action: Mapped[str] = mapped_column(String(16))
    client: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(400), default="")


class AutoShare(DurableJob, Base):
    """A study taken up by the automatic cloud film rule (``auto_share_*`` settings).

    One row per study (``study_uid`` is unique): however many server processes run the rule,
    the first to insert the row owns the study, and its claim (``DurableJob``) decides who
    issues the share. The share is issued in the same transaction that marks the row done,
    so a crash leaves either nothing (the job is taken again) or both.
    """

    __tablename__ = "auto_share"
    __table_args__ = (Index("ix_auto_share_due", "state", "next_attempt_at"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    #: The cloud film the study got; None until done (no foreign key: like ``ShareStudy``).
    share_id: Mapped[str | None] = mapped_column(String(16))
    #: ``issued`` (a new share), ``resolved`` (a share issued by accession number before the
    #: images arrived) or ``existing`` (a share staff had already issued for the study).
    outcome: Mapped[str] = mapped_column(String(16), default="")


# ------------------------------------------------------------------ institutions and people


class Institution(Base):
    """A hospital (or other owner of studies) on the platform (see docs/access.md)."""

    __tablename__ = "institution"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Short, stable name used in the CLI, the config and DIMSE peers (e.g. ``hosp-a``).
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(400), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StudyAccess(Base):
    """An institution that may see a study: the one whose AE, API client or import brought it
    in (``owner``), and those that sent the same data later (``holder``)."""

    __tablename__ = "study_access"

    study_pk: Mapped[int] = mapped_column(
        ForeignKey("study.pk", ondelete="CASCADE"), primary_key=True
    )
    institution_pk: Mapped[int] = mapped_column(
        ForeignKey("institution.pk", ondelete="CASCADE"), primary_key=True, index=True
    )
    #: ``owner`` or ``holder``.
    relation: Mapped[str] = mapped_column(String(16), default="owner")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserAccount(Base):
    """A person who signs in to the staff pages (see ``cloudfilm.access.accounts``)."""

    __tablename__ = "user_account"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    #: None only for platform administrators.
    institution_pk: Mapped[int | None] = mapped_column(
        ForeignKey("institution.pk", ondelete="RESTRICT"), index=True
    )
    #: ``platform-admin``, ``admin``, ``technologist``, ``radiologist`` or ``referring``.
    role: Mapped[str] = mapped_column(String(32))
    #: argon2id hash of the password.
    password_hash: Mapped[str] = mapped_column(String(200))
    #: Bumped when the password changes: sessions signed with an older value end.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    password_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_sign_in_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """A machine client's key (RIS, PACS, scripts): ``cfk_<key_id>_<secret>``, shown once.

    Only an HMAC-SHA256 of the secret under the server key is kept.
    """

    __tablename__ = "api_key"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Public part of the key (12 hex characters), for look-up and listing.
    key_id: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hmac: Mapped[str] = mapped_column(String(64))
    institution_pk: Mapped[int | None] = mapped_column(
        ForeignKey("institution.pk", ondelete="RESTRICT"), index=True
    )
    role: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(200), default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """One row of the append-only audit trail (see ``cloudfilm.audit``).

    ``hash`` is SHA-256 over the previous row's hash and this row's canonical content, so a
    changed, removed or reordered row breaks the chain (``cloudfilm audit verify``).
    """

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_actor", "actor_kind", "actor_id"),)

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    #: ``user``, ``apikey``, ``share``, ``peer``, ``development``, ``cli``, ``system`` or
    #: ``anonymous``.
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(200), default="")
    #: Code of the actor's institution, '' when none.
    institution: Mapped[str] = mapped_column(String(64), default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    agent: Mapped[str] = mapped_column(String(400), default="")
    #: e.g. ``sign-in``, ``view``, ``query``, ``retrieve``, ``download``, ``store``, ``delete``,
    #: ``share-create``, ``share-open``, ``share-revoke``.
    action: Mapped[str] = mapped_column(String(32), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    #: ``success``, ``denied`` or ``failure``.
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    #: Free text (route template, status code, counts); never a token or password.
    detail: Mapped[str] = mapped_column(String(1000), default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


# ----------------------------------------------------------- patients across institutions


class PlatformPatient(Base):
    """One person on the platform, whatever Patient IDs the institutions gave them
    (``cloudfilm.patients.pix``): the target of cross-references and of consents."""

    __tablename__ = "platform_patient"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Public identifier (16 hex characters), for staff and the API.
    id: Mapped[str] = mapped_column(String(16), unique=True)
    #: HMAC-SHA256 (hex, under the server key) of the strong key (e.g. the national ID
    #: number, normalised); None when the person is known only through staff links.
    strong_key_hmac: Mapped[str | None] = mapped_column(String(64), unique=True)
    #: The mobile phone one-time codes go to, sealed with the server key; and its last digits.
    phone_sealed: Mapped[str | None] = mapped_column(String(200))
    phone_hint: Mapped[str] = mapped_column(String(8), default="")
    #: Set when staff merged this person into another (links and consents moved there).
    merged_into_pk: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PatientLink(Base):
    """A cross-reference (PIX): one index patient — a Patient ID with its Issuer — is this
    platform patient. ``source`` says how it was made: ``dicom`` (Other Patient IDs Sequence
    at ingest), ``feed`` (the identity feed, REST) or ``staff``."""

    __tablename__ = "patient_link"

    patient_pk: Mapped[int] = mapped_column(
        ForeignKey("patient.pk", ondelete="CASCADE"), primary_key=True
    )
    platform_patient_pk: Mapped[int] = mapped_column(
        ForeignKey("platform_patient.pk", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(16), default="dicom")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Consent(Base):
    """A patient's consent that an institution — or one doctor there — sees some or all of
    their exams for a period (``cloudfilm.patients.consent``).

    ``pending`` until the one-time code sent to the patient's phone is entered (or staff
    record it in person), then ``active`` until ``expires_at`` or ``withdrawn``.
    """

    __tablename__ = "consent"
    __table_args__ = (Index("ix_consent_grantee", "grantee_institution_pk", "state"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(16), unique=True)
    platform_patient_pk: Mapped[int] = mapped_column(
        ForeignKey("platform_patient.pk", ondelete="CASCADE"), index=True
    )
    grantee_institution_pk: Mapped[int] = mapped_column(
        ForeignKey("institution.pk", ondelete="CASCADE")
    )
    #: One doctor of that institution (a username), or None: all its staff.
    grantee_username: Mapped[str | None] = mapped_column(String(64))
    #: Every exam of the patient, also later ones; else the exams of ``consent_study``.
    all_exams: Mapped[bool] = mapped_column(default=False)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: ``code`` (the patient entered the code sent to their phone) or ``staff:<username>``.
    confirmed_via: Mapped[str] = mapped_column(String(200), default="")
    #: HMAC of the one-time code; when it lapses; wrong entries so far.
    code_hmac: Mapped[str | None] = mapped_column(String(64))
    code_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    code_failures: Mapped[int] = mapped_column(Integer, default=0)
    #: Who asked: ``share:<id>`` (the patient, from a cloud film) or ``user:<name>``.
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsentStudy(Base):
    """An exam a consent covers (when it does not cover all of the patient's exams)."""

    __tablename__ = "consent_study"

    consent_pk: Mapped[int] = mapped_column(
        ForeignKey("consent.pk", ondelete="CASCADE"), primary_key=True
    )
    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Recognition(Base):
    """Whether an institution accepted an earlier exam of another one (mutual recognition,
    互认) instead of repeating it, recorded by one of its doctors."""

    __tablename__ = "recognition"
    __table_args__ = (Index("ix_recognition_institution", "institution_pk", "created_at"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    #: The institution that looked at the exam, and the one that made it (its owner).
    institution_pk: Mapped[int] = mapped_column(ForeignKey("institution.pk", ondelete="CASCADE"))
    origin_institution_pk: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(200), default="")
    accepted: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(String(400), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxMessage(Base):
    """A message the ``outbox`` notifier kept instead of sending it (tests and the demo read
    them; ``cloudfilm.patients.notify``)."""

    __tablename__ = "outbox_message"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    to: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
