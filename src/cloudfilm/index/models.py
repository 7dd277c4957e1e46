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
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

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
    __table_args__ = (Index("ix_instance_series_number", "series_pk", "instance_number"),)

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
    #: Where it came from: "import", "stow", "dimse:AET", ...
    source: Mapped[str | None] = mapped_column(String(100))
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
    can_store: Mapped[bool] = mapped_column(default=False)
    can_query: Mapped[bool] = mapped_column(default=False)
    can_retrieve: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
