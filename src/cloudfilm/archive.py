"""The archive façade: the one place that stores, finds and deletes DICOM.

DICOMweb routes, DIMSE handlers, the CLI and the share pages all call ``Archive``; none of them
touches the index or the blob store directly.

Storing follows Orthanc's order (write the file, then the index; undo the file if the index
fails): the Part 10 blob is written to a temporary name, fsync'd, renamed and its folder
fsync'd (``FileBlobStore.put``), then the index rows are committed (SQLite ``synchronous=FULL``
or PostgreSQL's default durable commit). Only then does ``store`` answer *stored*.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, cast

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloudfilm.core.config import Settings
from cloudfilm.core.db import create_index_engine, session_factory
from cloudfilm.core.errors import (
    CloudFilmError,
    Conflict,
    NotFound,
    OutOfResources,
    StorageFailure,
    TooLarge,
)
from cloudfilm.dicom.attributes import IndexFields, extract_index_fields
from cloudfilm.dicom.json import header_json
from cloudfilm.dicom.parse import ParsedInstance, parse_instance
from cloudfilm.index import migrate
from cloudfilm.index.models import Instance, Patient, PendingDelete, Series, Study, utcnow
from cloudfilm.storage import BlobStore, FileBlobStore, open_blob_store
from cloudfilm.storage.base import CHUNK

logger = logging.getLogger(__name__)


class StoreStatus(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"


@dataclass
class StoreResult:
    """The archive's answer to one ``store``."""

    status: StoreStatus
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    reason: str | None = None
    error: CloudFilmError | None = None
    warnings: list[str] = field(default_factory=list)
    replaced: bool = False

    @property
    def ok(self) -> bool:
        """True when the instance is safely in the archive (stored now or before)."""
        return self.status in (StoreStatus.STORED, StoreStatus.DUPLICATE)


@dataclass(frozen=True)
class DeleteResult:
    instances: int
    bytes: int


@dataclass(frozen=True)
class _Identity:
    patient_id: str
    issuer: str
    study_uid: str
    series_uid: str


class Archive:
    """Stores, indexes, finds and deletes DICOM instances."""

    def __init__(self, settings: Settings, engine: Engine, blobs: BlobStore) -> None:
        self.settings = settings
        self.engine = engine
        self.blobs = blobs
        self.sessions: sessionmaker[Session] = session_factory(engine)
        self._counters_lock = threading.Lock()
        self.counters: dict[str, int] = {s.value: 0 for s in StoreStatus} | {"bytes": 0}

    @classmethod
    def open(cls, settings: Settings, *, migrate_schema: bool = True) -> Archive:
        """Open (creating when needed) the archive the settings describe."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        engine = create_index_engine(settings.resolved_database_url)
        if migrate_schema:
            migrate.ensure_schema(engine)
        return cls(settings, engine, open_blob_store(settings))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ store

    def store(
        self,
        data: bytes | BinaryIO,
        *,
        transfer_syntax: str | None = None,
        source: str | None = None,
        source_ae: str | None = None,
    ) -> StoreResult:
        """Store one instance, received as a Part 10 file or as a bare data set.

        Parameters
        ----------
        data
            The received bytes, or a stream read to its end.
        transfer_syntax
            Transfer syntax of a bare data set (DIMSE); ignored for Part 10 files.
        source
            Where it came from, kept in the index ("import", "stow", "dimse:CT1").
        source_ae
            Calling AE title, written into a generated File Meta Information header.

        Returns
        -------
        StoreResult
            ``stored`` or ``duplicate`` (both durable), ``conflict`` or ``rejected`` with a
            reason. Failures of the machine itself (disk full, index unreachable) are answered
            as ``rejected`` with an ``OutOfResources``/``StorageFailure`` error.
        """
        try:
            self._check_free_space()
            with self._spool(data) as spool:
                parsed = parse_instance(spool, transfer_syntax=transfer_syntax, source_ae=source_ae)
                result = self._store_parsed(spool, parsed, source)
        except CloudFilmError as exc:
            result = StoreResult(StoreStatus.REJECTED, reason=exc.message, error=exc)
        except Exception as exc:  # the index or storage failed: answer, never crash the caller
            logger.exception("store failed")
            error = StorageFailure(f"processing failure: {type(exc).__name__}: {exc}")
            result = StoreResult(StoreStatus.REJECTED, reason=error.message, error=error)
        self._count(result)
        return result

    def _count(self, result: StoreResult) -> None:
        with self._counters_lock:
            self.counters[result.status.value] += 1

    def _check_free_space(self) -> None:
        if self.settings.min_free_bytes <= 0:
            return
        free = shutil.disk_usage(self.settings.data_dir).free
        if free < self.settings.min_free_bytes:
            raise OutOfResources(
                f"only {free // 2**20} MiB free in {self.settings.data_dir}; new data is "
                f"refused below the floor of {self.settings.min_free_bytes // 2**20} MiB"
            )

    def _spool(self, data: bytes | BinaryIO) -> Any:
        limit = self.settings.max_instance_bytes
        if isinstance(data, bytes | bytearray | memoryview):
            if len(data) > limit:
                raise TooLarge(f"instance of {len(data)} bytes exceeds the limit of {limit}")
            return io.BytesIO(bytes(data))
        spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - returned to a with block
            max_size=self.settings.spool_memory_bytes, dir=str(self.settings.tmp_dir)
        )
        total = 0
        try:
            while chunk := data.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise TooLarge(f"instance exceeds the limit of {limit} bytes")
                spool.write(chunk)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool

    def _store_parsed(
        self, spool: BinaryIO, parsed: ParsedInstance, source: str | None
    ) -> StoreResult:
        fields = extract_index_fields(parsed.dataset)
        notes = parsed.warnings + fields.notes
        ident = _Identity(
            fields.patient["patient_id"], fields.patient["issuer"], parsed.study_uid,
            parsed.series_uid,
        )  # fmt: skip
        base = StoreResult(
            StoreStatus.STORED,
            sop_instance_uid=parsed.sop_instance_uid,
            sop_class_uid=parsed.sop_class_uid,
            study_uid=parsed.study_uid,
            series_uid=parsed.series_uid,
            warnings=notes,
        )
        existing = self._existing_identity(parsed.sop_instance_uid)
        replace = False
        if existing is not None:
            verdict = self._compare(existing, ident, base)
            if verdict is not None:
                return verdict
            replace = True
        header = header_json(parsed.dataset, parsed.pixel_data_vr)
        key = _new_blob_key()
        spool.seek(0)
        info = self.blobs.put(key, cast(BinaryIO, _Prefixed(parsed.header_prefix, spool)))
        row = {
            "sop_instance_uid": parsed.sop_instance_uid,
            "sop_class_uid": parsed.sop_class_uid,
            "transfer_syntax_uid": parsed.transfer_syntax,
            "blob_key": key,
            "size_bytes": info.size,
            "sha256": info.sha256,
            "dataset_offset": parsed.dataset_offset,
            "received_whole": not parsed.header_prefix,
            "header_json": header,
            "source": source,
            **fields.instance,
        }
        try:
            outcome = self._commit_instance(ident, fields, row, replace)
        except BaseException:
            self._discard_uncommitted(key)
            raise
        if outcome is not None:  # lost a race, or a conflict found inside the transaction
            self.blobs.delete(key)
            if outcome == "race":
                existing = self._existing_identity(parsed.sop_instance_uid)
                if existing is not None:
                    verdict = self._compare(existing, ident, base)
                    if verdict is not None:
                        return verdict
                raise StorageFailure("instance changed concurrently; send it again")
            return _conflict(base, outcome)
        base.replaced = replace
        with self._counters_lock:
            self.counters["bytes"] += info.size
        self._finish_pending_deletes()
        return base

    def _discard_uncommitted(self, key: str) -> None:
        """Remove the blob of a failed commit, unless the commit did happen after all.

        A connection can drop after the server committed but before the client heard so. The
        blob is removed only when the index says for certain that no row uses it; when the
        index cannot be asked, it stays as an orphan for ``cloudfilm check --repair``.
        """
        try:
            with self.sessions() as session:
                used = session.execute(select(Instance.pk).where(Instance.blob_key == key)).first()
        except Exception:
            logger.warning("index unreachable; blob %s left for check --repair", key)
            return
        if used is None:
            self.blobs.delete(key)

    def _compare(
        self, existing: _Identity, ident: _Identity, base: StoreResult
    ) -> StoreResult | None:
        """Duplicate or conflict answer for a known SOP Instance UID; None to replace it."""
        if existing == ident:
            base.status = StoreStatus.DUPLICATE
            return base
        what = [
            label
            for label, a, b in (
                (
                    "patient",
                    (existing.patient_id, existing.issuer),
                    (ident.patient_id, ident.issuer),
                ),
                ("study", existing.study_uid, ident.study_uid),
                ("series", existing.series_uid, ident.series_uid),
            )
            if a != b
        ]
        if self.settings.conflict_policy == "replace":
            return None
        return _conflict(
            base,
            f"SOP Instance UID {base.sop_instance_uid} is already stored with "
            f"another {', '.join(what)}",
        )

    def _existing_identity(self, sop_instance_uid: str) -> _Identity | None:
        with self.sessions() as session:
            row = session.execute(
                select(Patient.patient_id, Patient.issuer, Study.study_uid, Series.series_uid)
                .select_from(Instance)
                .join(Series, Series.pk == Instance.series_pk)
                .join(Study, Study.pk == Series.study_pk)
                .join(Patient, Patient.pk == Study.patient_pk)
                .where(Instance.sop_instance_uid == sop_instance_uid)
            ).first()
            session.rollback()
        return _Identity(*row) if row else None

    def _commit_instance(
        self, ident: _Identity, fields: IndexFields, row: dict[str, Any], replace: bool
    ) -> str | None:
        """Insert the index rows in one transaction. Returns None, "race" or a conflict reason."""
        try:
            with self.sessions.begin() as session:
                old_key = None
                if replace:
                    old_key = self._remove_instance_row(session, row["sop_instance_uid"])
                patient_pk = self._get_or_create(
                    session, Patient,
                    {"patient_id": ident.patient_id, "issuer": ident.issuer},
                    fields.patient,
                )  # fmt: skip
                study = self._lock_study(session, ident.study_uid, patient_pk, fields)
                if study.patient_pk != patient_pk:
                    return f"study {ident.study_uid} belongs to another patient"
                series_pk = self._get_or_create(
                    session, Series, {"series_uid": ident.series_uid},
                    {**fields.series, "study_pk": study.pk},
                )  # fmt: skip
                series = session.get(Series, series_pk)
                assert series is not None
                if series.study_pk != study.pk:
                    return f"series {ident.series_uid} belongs to another study"
                session.add(Instance(series_pk=series_pk, **row))
                session.flush()
                self._add_to_counts(session, study, series, row["size_bytes"])
                if old_key:
                    session.add(PendingDelete(blob_key=old_key))
        except IntegrityError:
            return "race"
        return None

    def _get_or_create(
        self, session: Session, model: Any, keys: dict[str, Any], values: dict[str, Any]
    ) -> int:
        """Primary key of the row with ``keys``, inserting it when missing (race-safe)."""
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        stmt = insert(model).values({**values, **keys}).on_conflict_do_nothing()
        session.execute(stmt)
        where = [getattr(model, k) == v for k, v in keys.items()]
        return int(session.execute(select(model.pk).where(*where)).scalar_one())

    def _lock_study(
        self, session: Session, study_uid: str, patient_pk: int, fields: IndexFields
    ) -> Study:
        self._get_or_create(
            session, Study, {"study_uid": study_uid}, {**fields.study, "patient_pk": patient_pk}
        )
        # Row lock (PostgreSQL): derived counts of one study change one transaction at a time.
        # SQLite transactions are already serialised by BEGIN IMMEDIATE.
        return session.execute(
            select(Study).where(Study.study_uid == study_uid).with_for_update()
        ).scalar_one()

    def _add_to_counts(self, session: Session, study: Study, series: Series, size: int) -> None:
        session.execute(
            update(Series)
            .where(Series.pk == series.pk)
            .values(num_instances=Series.num_instances + 1, size_bytes=Series.size_bytes + size)
        )
        self._refresh_study(session, study.pk)

    def _refresh_study(self, session: Session, study_pk: int) -> None:
        """Recompute a study's derived values from its series (under the study lock)."""
        agg = session.execute(
            select(
                func.count(Series.pk),
                func.coalesce(func.sum(Series.num_instances), 0),
                func.coalesce(func.sum(Series.size_bytes), 0),
            ).where(Series.study_pk == study_pk, Series.num_instances > 0)
        ).one()
        modalities = session.execute(
            select(Series.modality)
            .where(Series.study_pk == study_pk, Series.num_instances > 0)
            .distinct()
        ).scalars()
        session.execute(
            update(Study)
            .where(Study.pk == study_pk)
            .values(
                num_series=agg[0],
                num_instances=agg[1],
                size_bytes=agg[2],
                modalities="\\".join(sorted(m for m in modalities if m)),
                updated_at=utcnow(),
            )
        )

    def _remove_instance_row(self, session: Session, sop_instance_uid: str) -> str | None:
        instance = session.execute(
            select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
        ).scalar_one_or_none()
        if instance is None:
            return None
        series = session.get(Series, instance.series_pk)
        assert series is not None
        study = session.execute(
            select(Study).where(Study.pk == series.study_pk).with_for_update()
        ).scalar_one()
        key = instance.blob_key
        session.delete(instance)
        session.flush()
        session.execute(
            update(Series)
            .where(Series.pk == series.pk)
            .values(
                num_instances=Series.num_instances - 1,
                size_bytes=Series.size_bytes - instance.size_bytes,
            )
        )
        self._prune(session, series.pk, study.pk)
        return key

    def _prune(self, session: Session, series_pk: int, study_pk: int) -> None:
        """Drop a series, study or patient left empty, and refresh the study's counts."""
        session.execute(delete(Series).where(Series.pk == series_pk, Series.num_instances <= 0))
        self._prune_empty(session, study_pk)

    def _prune_empty(self, session: Session, study_pk: int) -> None:
        """Drop empty series of a study; then the study and patient if empty; else recount."""
        session.execute(
            delete(Series).where(Series.study_pk == study_pk, Series.num_instances <= 0)
        )
        remaining = session.execute(
            select(func.count(Series.pk)).where(Series.study_pk == study_pk)
        ).scalar_one()
        if remaining:
            self._refresh_study(session, study_pk)
            return
        patient_pk = session.execute(
            select(Study.patient_pk).where(Study.pk == study_pk)
        ).scalar_one()
        session.execute(delete(Study).where(Study.pk == study_pk))
        if not session.execute(
            select(func.count(Study.pk)).where(Study.patient_pk == patient_pk)
        ).scalar_one():
            session.execute(delete(Patient).where(Patient.pk == patient_pk))

    # ----------------------------------------------------------------- delete

    def delete_instances(self, sop_instance_uids: list[str]) -> DeleteResult:
        """Delete instances: rows and derived counts in one transaction, then the blobs."""
        removed = size = 0
        with self.sessions.begin() as session:
            for uid in sop_instance_uids:
                instance = session.execute(
                    select(Instance.size_bytes).where(Instance.sop_instance_uid == uid)
                ).scalar_one_or_none()
                key = self._remove_instance_row(session, uid)
                if key is not None:
                    session.add(PendingDelete(blob_key=key))
                    removed += 1
                    size += instance or 0
        self._finish_pending_deletes()
        return DeleteResult(removed, size)

    def delete_study(self, study_uid: str) -> DeleteResult:
        return self._delete_where(Study.study_uid == study_uid, f"study {study_uid}")

    def delete_series(self, series_uid: str) -> DeleteResult:
        return self._delete_where(Series.series_uid == series_uid, f"series {series_uid}")

    def delete_instance(self, sop_instance_uid: str) -> DeleteResult:
        return self._delete_where(
            Instance.sop_instance_uid == sop_instance_uid, f"instance {sop_instance_uid}"
        )

    def delete_patient(self, patient_id: str, issuer: str | None = None) -> DeleteResult:
        cond = Patient.patient_id == patient_id
        if issuer is not None:
            cond = cond & (Patient.issuer == issuer)
        return self._delete_where(cond, f"patient {patient_id}")

    def _delete_where(self, condition: Any, label: str) -> DeleteResult:
        with self.sessions() as session:
            uids = list(
                session.execute(
                    select(Instance.sop_instance_uid)
                    .select_from(Instance)
                    .join(Series, Series.pk == Instance.series_pk)
                    .join(Study, Study.pk == Series.study_pk)
                    .join(Patient, Patient.pk == Study.patient_pk)
                    .where(condition)
                ).scalars()
            )
        if not uids:
            raise NotFound(f"{label} is not in the archive")
        return self.delete_instances(uids)

    def _finish_pending_deletes(self) -> None:
        """Remove blobs whose rows are gone (deleted or replaced), then forget them."""
        with self.sessions() as session:
            keys = list(session.execute(select(PendingDelete.blob_key).limit(10_000)).scalars())
            session.rollback()
        if not keys:
            return
        for key in keys:
            self.blobs.delete(key)
        with self.sessions.begin() as session:
            session.execute(delete(PendingDelete).where(PendingDelete.blob_key.in_(keys)))

    # ------------------------------------------------------------------- read

    def instance(self, sop_instance_uid: str) -> Instance:
        with self.sessions() as session:
            row = session.execute(
                select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
            ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"instance {sop_instance_uid} is not in the archive")
        return row

    def open_instance(self, sop_instance_uid: str) -> BinaryIO:
        """The stored Part 10 blob, as a stream."""
        return self.blobs.open(self.instance(sop_instance_uid).blob_key)

    def read_instance(self, sop_instance_uid: str) -> bytes:
        with self.open_instance(sop_instance_uid) as fp:
            return fp.read()

    def iter_instances(self) -> Iterator[Instance]:
        with self.sessions() as session:
            yield from session.execute(select(Instance).order_by(Instance.pk)).scalars()


def _conflict(base: StoreResult, reason: str) -> StoreResult:
    base.status = StoreStatus.CONFLICT
    base.reason = reason
    base.error = Conflict(reason)
    return base


def _new_blob_key() -> str:
    name = uuid.uuid4().hex
    return f"{name[:2]}/{name[2:4]}/{name}.dcm"


class _Prefixed:
    """A stream that yields ``prefix`` and then the rest of ``stream``."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = memoryview(prefix)
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            n = len(self._prefix) if size < 0 else min(size, len(self._prefix))
            head = bytes(self._prefix[:n])
            self._prefix = self._prefix[n:]
            if size < 0:
                return head + self._stream.read()
            return head
        return self._stream.read(size)


def data_dir_of(archive: Archive) -> Path:
    return archive.settings.data_dir


def is_file_store(archive: Archive) -> bool:
    return isinstance(archive.blobs, FileBlobStore)
