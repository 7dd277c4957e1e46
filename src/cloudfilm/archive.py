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
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
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
from cloudfilm.index.models import (
    Instance,
    Patient,
    PendingDelete,
    Series,
    Study,
    StudyAccess,
    utcnow,
)
from cloudfilm.storage import BlobStore, FileBlobStore, open_blob_store
from cloudfilm.storage.base import CHUNK, BlobInfo, new_blob_key

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
        #: (study pk, institution pk) pairs this process has granted (see ``_grant_study``).
        self._granted: set[tuple[int, int]] = set()
        self.counters: dict[str, int] = {s.value: 0 for s in StoreStatus} | {"bytes": 0}
        self._writer: ThreadPoolExecutor | None = None
        self._commits = _GroupCommit()

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
        """Finish the blob writers and the audit trail (what it holds reaches the index, for
        up to 10 seconds), then close the index's connections."""
        from cloudfilm.audit import close_trail

        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        close_trail(self, timeout=10)
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
        turn: StoreTurn | None = None,
        institution: int | None = None,
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
        turn
            For stores of one request running at once: their index rows are written in the
            order of their turns, so that of two copies of one instance the first received is
            the one kept (see ``StoreTurn``).
        institution
            Primary key of the institution that sent it (its AE, API client or import): the
            study's owner if it is new to the platform, else a holder that may see it too
            (also for a duplicate). None leaves the study's access as it is.

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
                early = self._early_put(spool)
                try:
                    parsed = parse_instance(
                        spool, transfer_syntax=transfer_syntax, source_ae=source_ae
                    )
                except BaseException:
                    if early is not None:
                        self._abandon_blob(early)
                    raise
                result = self._store_parsed(spool, parsed, source, early, turn, institution)
        except CloudFilmError as exc:
            result = StoreResult(StoreStatus.REJECTED, reason=exc.message, error=exc)
        except Exception as exc:  # the index or storage failed: answer, never crash the caller
            logger.exception("store failed")
            error = StorageFailure(f"processing failure: {type(exc).__name__}: {exc}")
            result = StoreResult(StoreStatus.REJECTED, reason=error.message, error=error)
        finally:
            if turn is not None:
                turn.passed()  # refused before the index: the next store need not wait
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

    def _spool(self, data: bytes | BinaryIO) -> BinaryIO:
        """The received instance as a seekable stream: in memory (a ``BytesIO``) up to
        ``spool_memory_bytes``, beyond that a temporary file; over the size limit refused."""
        limit = self.settings.max_instance_bytes
        if isinstance(data, bytes | bytearray | memoryview):
            if len(data) > limit:
                raise TooLarge(f"instance of {len(data)} bytes exceeds the limit of {limit}")
            return io.BytesIO(bytes(data))
        chunks: list[bytes] = []
        spilled: BinaryIO | None = None
        total = 0
        try:
            while chunk := data.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise TooLarge(f"instance exceeds the limit of {limit} bytes")
                if spilled is not None:
                    spilled.write(chunk)
                    continue
                chunks.append(chunk)
                if total > self.settings.spool_memory_bytes:
                    spilled = cast(BinaryIO, tempfile.TemporaryFile(dir=self.settings.tmp_dir))  # noqa: SIM115
                    for held in chunks:
                        spilled.write(held)
                    chunks.clear()
        except BaseException:
            if spilled is not None:
                spilled.close()
            raise
        if spilled is None:
            return io.BytesIO(b"".join(chunks))
        spilled.seek(0)
        return spilled

    def _early_put(self, spool: BinaryIO) -> _Writing | None:
        """Start writing a Part 10 file received whole before it is even parsed.

        Such a file is stored exactly as received, so its blob does not depend on the parse;
        writing it at once lets the disk work while the header is read. Only for data held
        in memory (the writer gets its own stream over it). A refused file's blob is removed.
        """
        if not isinstance(spool, io.BytesIO):
            return None
        data = spool.getvalue()
        if data[128:132] != b"DICM":
            return None
        key = new_blob_key()
        return _Writing(key, self._blob_writer().submit(self.blobs.put, key, io.BytesIO(data)))

    def _store_parsed(
        self,
        spool: BinaryIO,
        parsed: ParsedInstance,
        source: str | None,
        early: _Writing | None = None,
        turn: StoreTurn | None = None,
        institution: int | None = None,
    ) -> StoreResult:
        base = StoreResult(
            StoreStatus.STORED,
            sop_instance_uid=parsed.sop_instance_uid,
            sop_class_uid=parsed.sop_class_uid,
            study_uid=parsed.study_uid,
            series_uid=parsed.series_uid,
            warnings=list(parsed.warnings),
        )
        # The blob is written and fsync'd on a writer thread while this one turns the header
        # into index rows and DICOM JSON: the disk's wait overlaps Python's work. The index is
        # written only once the blob is durable (``writing.result()``).
        if early is not None and not parsed.header_prefix:
            writing = early
        else:
            if early is not None:
                self._abandon_blob(early)
            key = new_blob_key()
            spool.seek(0)
            source_stream = cast(BinaryIO, _Prefixed(parsed.header_prefix, spool))
            writing = _Writing(key, self._blob_writer().submit(self.blobs.put, key, source_stream))
        key = writing.key
        try:
            fields = extract_index_fields(parsed.dataset)
            base.warnings += fields.notes
            ident = _Identity(
                fields.patient["patient_id"], fields.patient["issuer"], parsed.study_uid,
                parsed.series_uid,
            )  # fmt: skip
            header = header_json(parsed.dataset, parsed.pixel_data_vr)
            info = writing.future.result()
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
                "received_at": utcnow(),
                **fields.instance,
            }
            verdict = self._commit_instance(ident, fields, row, base, turn, institution)
        except BaseException:
            self._abandon_blob(writing)
            raise
        if verdict is not None:  # duplicate or conflict: the transaction wrote nothing
            self.blobs.delete(key)
            return verdict
        with self._counters_lock:
            self.counters["bytes"] += info.size
        if base.replaced:
            self._finish_pending_deletes()
        return base

    def _blob_writer(self) -> ThreadPoolExecutor:
        """Threads that write blobs (created on first use; several stores may run at once)."""
        with self._counters_lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(
                    max_workers=self.settings.blob_writer_threads, thread_name_prefix="blob-put"
                )
            return self._writer

    def _abandon_blob(self, writing: _Writing) -> None:
        """Remove the blob of a store that did not commit (after its write has finished)."""
        try:
            writing.future.result()
        except BaseException:
            return  # the write failed: ``put`` left nothing behind
        self._discard_uncommitted(writing.key)

    def _discard_uncommitted(self, key: str) -> None:
        """Remove the blob of a failed commit, unless the commit did happen after all.

        A connection can drop after the server committed but before the client heard so. The
        blob is removed only when the index says for certain that no row uses it; when the
        index cannot be asked, it stays as an orphan for ``cloudfilm check --repair``.
        """
        try:
            with self.engine.connect() as conn:
                used = conn.execute(select(Instance.pk).where(Instance.blob_key == key)).first()
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

    def _commit_instance(
        self,
        ident: _Identity,
        fields: IndexFields,
        row: dict[str, Any],
        base: StoreResult,
        turn: StoreTurn | None = None,
        institution: int | None = None,
    ) -> StoreResult | None:
        """Index the instance; None when stored (committed), else the answer to give.

        Stores running at the same time (DIMSE associations, STOW-RS requests, import
        workers) share one transaction and one commit (group commit): the first to reach the
        index writes everything waiting, each instance in its own savepoint, and all of them
        answer after that commit. A lone store is simply a batch of one.
        """
        job = _IndexJob(ident, fields, row, base, institution)
        if turn is not None:
            turn.wait()
        self._commits.run(job, self._index_batch, turn.passed if turn is not None else None)
        if job.error is not None:
            raise job.error
        return job.answer

    def _index_batch(self, batch: list[_IndexJob]) -> None:
        """Index a batch in one transaction (see ``_index_job``); a failed commit fails all."""
        try:
            with self.engine.begin() as conn:
                for job in batch:
                    self._index_job(conn, job)
        except BaseException as exc:  # nothing of the batch was committed
            for job in batch:
                job.answer, job.error = None, exc
            if not isinstance(exc, Exception):
                raise

    def _index_job(self, conn: Connection, job: _IndexJob) -> None:
        """Index one instance inside a savepoint of the batch's transaction.

        It first looks for the SOP Instance UID: a known one is a duplicate or a conflict
        (or, under the replace policy, its old row goes in the same transaction). Each level
        is then one upsert that returns the row's key (and, on PostgreSQL, locks the row, so
        derived counts of one study change one transaction at a time; SQLite transactions are
        serialised by ``BEGIN IMMEDIATE``). Counts are incremented; the study's series count
        and modalities are recomputed only when a series gets its first instance. A
        concurrent store of the same instance that commits first makes the insert fail on the
        unique index: the savepoint is rolled back and the look-up done once more.
        """
        for _attempt in range(2):
            try:
                with conn.begin_nested():
                    self._index_rows(
                        conn, job.ident, job.fields, job.row, job.base, job.institution
                    )
            except IntegrityError:
                continue
            except _Answer as answer:
                job.answer = answer.result
                if job.institution is not None and answer.result.status is StoreStatus.DUPLICATE:
                    self._grant_study(conn, job.ident.study_uid, job.institution)
            except _Refused as refused:
                job.answer = _conflict(job.base, str(refused))
            except Exception as exc:
                job.error = exc
            return
        job.error = StorageFailure("instance changed concurrently; send it again")

    def _index_rows(
        self,
        conn: Connection,
        ident: _Identity,
        fields: IndexFields,
        row: dict[str, Any],
        base: StoreResult,
        institution: int | None = None,
    ) -> None:
        sql = _statements(self.engine.dialect.name)
        old_key = None
        existing = conn.execute(sql.identity, {"uid": row["sop_instance_uid"]}).first()
        if existing is not None:
            verdict = self._compare(_Identity(*existing), ident, base)
            if verdict is not None:
                raise _Answer(verdict)
            with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
                old_key = self._remove_instance_row(session, row["sop_instance_uid"])
                session.commit()
            base.replaced = True
        patient_pk = conn.execute(
            sql.patient,
            {**fields.patient, "patient_id": ident.patient_id, "issuer": ident.issuer},
        ).scalar_one()
        if fields.other_ids:  # a strong key links the patient across institutions
            from cloudfilm.patients.pix import link_at_ingest

            link_at_ingest(conn, patient_pk, fields.other_ids, fields.telephone, self.settings)
        study_pk, owner = conn.execute(
            sql.study, {**fields.study, "study_uid": ident.study_uid, "patient_pk": patient_pk}
        ).one()
        if owner != patient_pk:
            raise _Refused(f"study {ident.study_uid} belongs to another patient")
        series_pk, parent, count = conn.execute(
            sql.series, {**fields.series, "series_uid": ident.series_uid, "study_pk": study_pk}
        ).one()
        if parent != study_pk:
            raise _Refused(f"series {ident.series_uid} belongs to another study")
        if institution is not None and (study_pk, institution) not in self._granted:
            holders = (
                conn.execute(
                    select(StudyAccess.institution_pk).where(StudyAccess.study_pk == study_pk)
                )
                .scalars()
                .all()
            )
            if holders and institution not in holders:
                # New data for a study only others may see: refused, revealing nothing of it.
                raise _Refused("this sender may not add instances to this study")
            self._grant_study(conn, ident.study_uid, institution, study_pk)
        conn.execute(sql.instance, {**row, "series_pk": series_pk})
        size = row["size_bytes"]
        conn.execute(sql.count_series, {"row_pk": series_pk, "size": size})
        if count == 0:  # a new series (or one emptied by a replace)
            self._refresh_study(conn, study_pk)
        else:
            at = row["received_at"]
            conn.execute(sql.count_study, {"row_pk": study_pk, "size": size, "at": at})
        if old_key:
            conn.execute(insert(PendingDelete).values(blob_key=old_key))

    def _grant_study(
        self, conn: Connection, study_uid: str, institution: int, study_pk: int | None = None
    ) -> None:
        """Record that ``institution`` may see the study: its owner when nobody else holds
        it yet, else a holder. Done once per study and institution in this process."""
        if study_pk is None:
            study_pk = conn.execute(
                select(Study.pk).where(Study.study_uid == study_uid)
            ).scalar_one_or_none()
            if study_pk is None:
                return
        if (study_pk, institution) in self._granted:
            return
        sql = _statements(self.engine.dialect.name)
        conn.execute(sql.grant, {"study": study_pk, "inst": institution, "at": utcnow()})
        with self._counters_lock:
            if len(self._granted) > 100_000:
                self._granted.clear()
            self._granted.add((study_pk, institution))

    def _refresh_study(self, session: Session | Connection, study_pk: int) -> None:
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
        session.execute(delete(Study).where(Study.pk == study_pk))  # its access rows cascade
        with self._counters_lock:  # a new study may get this key again (SQLite reuses rowids)
            self._granted = {g for g in self._granted if g[0] != study_pk}
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


class StoreTurn:
    """A place in line for the index, for stores of one request that run at once.

    Each turn is made after the previous one (``StoreTurn(previous)``); a store waits until
    the previous store's job is queued for the index (or that store ended without one) before
    queuing its own. Jobs are committed in queue order, so rows are written in the order the
    instances were received, while parsing and blob writing still overlap.
    """

    def __init__(self, previous: StoreTurn | None = None) -> None:
        self._previous = previous
        self._passed = threading.Event()

    def wait(self) -> None:
        if self._previous is not None:
            self._previous._passed.wait()
            self._previous = None  # let the chain be collected

    def passed(self) -> None:
        self._passed.set()


@dataclass
class _IndexJob:
    """One instance waiting to be indexed, and what became of it."""

    ident: _Identity
    fields: IndexFields
    row: dict[str, Any]
    base: StoreResult
    institution: int | None = None
    answer: StoreResult | None = None
    error: BaseException | None = None
    done: bool = False


class _GroupCommit:
    """Runs waiting index jobs in batches: one committer at a time takes all that wait.

    A thread adds its job, then takes the commit lock; if another thread's batch already
    included the job (it is ``done``), there is nothing left to do. Otherwise this thread
    commits every job waiting, its own among them. Memory stays bounded by the number of
    threads storing at once.
    """

    def __init__(self) -> None:
        self._commit_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._waiting: list[_IndexJob] = []

    def run(
        self,
        job: _IndexJob,
        commit: Callable[[list[_IndexJob]], None],
        queued: Callable[[], None] | None = None,
    ) -> None:
        with self._queue_lock:
            self._waiting.append(job)
        if queued is not None:
            queued()
        with self._commit_lock:
            if job.done:
                return
            with self._queue_lock:
                batch, self._waiting = self._waiting, []
            try:
                commit(batch)
            finally:
                for waiting in batch:
                    waiting.done = True


@dataclass(frozen=True)
class _Writing:
    """A blob being written on a writer thread."""

    key: str
    future: Future[BlobInfo]


@dataclass(frozen=True)
class _Statements:
    """The statements of one store, built once per dialect (compiled once, then cached)."""

    identity: Any
    patient: Any
    study: Any
    series: Any
    instance: Any
    count_series: Any
    count_study: Any
    grant: Any


@cache
def _statements(dialect: str) -> _Statements:
    """Upserts that return the row's key in one statement, and the count increments.

    The conflict clause sets a key column to itself: a no-op that makes the database return
    (and, on PostgreSQL, lock) the existing row. Values are bound at execution.
    """
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert

    def upsert(model: Any, keys: tuple[str, ...], *returning: Any) -> Any:
        stmt = dialect_insert(model.__table__)
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={keys[0]: getattr(stmt.excluded, keys[0])}
        ).returning(*returning)

    series, study = cast(Table, Series.__table__), cast(Table, Study.__table__)
    access = cast(Table, StudyAccess.__table__)
    held = select(access.c.study_pk).where(access.c.study_pk == bindparam("study")).exists()
    grant = (
        dialect_insert(access)
        .from_select(
            ["study_pk", "institution_pk", "relation", "created_at"],
            select(
                bindparam("study"),
                bindparam("inst"),
                case((held, literal("holder")), else_=literal("owner")),
                bindparam("at"),
            ),
        )
        .on_conflict_do_nothing(index_elements=["study_pk", "institution_pk"])
    )
    identity = (
        select(Patient.patient_id, Patient.issuer, Study.study_uid, Series.series_uid)
        .select_from(Instance)
        .join(Series, Series.pk == Instance.series_pk)
        .join(Study, Study.pk == Series.study_pk)
        .join(Patient, Patient.pk == Study.patient_pk)
        .where(Instance.sop_instance_uid == bindparam("uid"))
    )
    return _Statements(
        identity=identity,
        patient=upsert(Patient, ("patient_id", "issuer"), Patient.pk),
        study=upsert(Study, ("study_uid",), Study.pk, Study.patient_pk),
        series=upsert(Series, ("series_uid",), Series.pk, Series.study_pk, Series.num_instances),
        instance=insert(cast(Table, Instance.__table__)),
        count_series=update(series)
        .where(series.c.pk == bindparam("row_pk"))
        .values(
            num_instances=series.c.num_instances + 1,
            size_bytes=series.c.size_bytes + bindparam("size"),
        ),
        count_study=update(study)
        .where(study.c.pk == bindparam("row_pk"))
        .values(
            num_instances=study.c.num_instances + 1,
            size_bytes=study.c.size_bytes + bindparam("size"),
            updated_at=bindparam("at"),
        ),
        grant=grant,
    )


class _Refused(Exception):
    """A conflict found inside the index transaction (rolls it back)."""


class _Answer(Exception):
    """A known instance found inside the index transaction: the answer to give."""

    def __init__(self, result: StoreResult) -> None:
        super().__init__(result.status.value)
        self.result = result


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
