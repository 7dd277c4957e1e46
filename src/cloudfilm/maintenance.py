"""Consistency check and repair, backup and restore of the archive."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cloudfilm import __version__
from cloudfilm.archive import Archive, StoreStatus
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import CloudFilmError, NotFound
from cloudfilm.index import migrate
from cloudfilm.index.models import Instance, PendingDelete, Series, Study
from cloudfilm.storage import FileBlobStore
from cloudfilm.storage.base import CHUNK

logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """What ``check_archive`` found and, with ``repair``, what it did."""

    instances: int = 0
    blobs: int = 0
    missing_blobs: list[str] = field(default_factory=list)  # SOP Instance UIDs
    bad_checksums: list[str] = field(default_factory=list)  # SOP Instance UIDs
    orphan_blobs: list[str] = field(default_factory=list)  # blob keys
    wrong_counts: list[str] = field(default_factory=list)  # Study UIDs
    temporary_files: int = 0
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    repair: bool = False

    @property
    def problems(self) -> int:
        return (
            len(self.missing_blobs)
            + len(self.bad_checksums)
            + len(self.orphan_blobs)
            + len(self.wrong_counts)
        )

    @property
    def consistent_after(self) -> bool:
        """True when the archive is consistent now (after repairs, if any were made)."""
        if self.repair:
            return not self.unrepaired
        return self.problems == 0

    def lines(self) -> list[str]:
        out = [f"{self.instances} instances indexed, {self.blobs} blobs stored"]
        for label, items in (
            ("index rows without their blob", self.missing_blobs),
            ("blobs whose checksum differs from the index", self.bad_checksums),
            ("blobs without an index row", self.orphan_blobs),
            ("studies with wrong derived counts", self.wrong_counts),
        ):
            if items:
                out.append(f"{len(items)} {label}: " + ", ".join(items[:10]))
        if self.temporary_files:
            out.append(f"{self.temporary_files} temporary files of interrupted writes")
        out += [f"repaired: {line}" for line in self.repaired]
        out += [f"NOT repaired: {line}" for line in self.unrepaired]
        if self.consistent_after:
            out.append("archive is consistent")
        else:
            out.append("archive is NOT consistent" + ("" if self.repair else "; run with --repair"))
        return out

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["consistent"] = self.consistent_after
        return data


def check_archive(archive: Archive, *, repair: bool = False) -> CheckReport:
    """Verify rows against blobs (existence and SHA-256) and blobs against rows.

    Repairs: finish interrupted deletions; re-index orphan blobs that hold a readable
    instance (an interrupted store) and remove the others; drop rows whose blob is gone (the
    data is lost: reported); recompute wrong study counts; remove temporary files. A blob whose
    checksum differs is reported, never "repaired".
    """
    report = CheckReport(repair=repair)
    if repair:
        archive._finish_pending_deletes()
    with archive.sessions() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.blob_key, Instance.sha256)
        ).all()
        pending = set(session.execute(select(PendingDelete.blob_key)).scalars())
    known = {key for _uid, key, _sha in rows}
    report.instances = len(rows)
    for uid, key, sha in rows:
        try:
            digest = _sha256(archive, key)
        except NotFound:
            report.missing_blobs.append(uid)
            continue
        if digest != sha:
            report.bad_checksums.append(uid)
    keys = list(archive.blobs.keys())
    report.blobs = len(keys)
    report.orphan_blobs = [k for k in keys if k not in known]
    report.wrong_counts = _wrong_counts(archive)
    if isinstance(archive.blobs, FileBlobStore):
        report.temporary_files = len(list((archive.blobs.root / ".tmp").glob("*.part")))
    if repair:
        _repair(archive, report, pending)
    return report


def _sha256(archive: Archive, key: str) -> str:
    digest = hashlib.sha256()
    with archive.blobs.open(key) as fp:
        while chunk := fp.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _wrong_counts(archive: Archive) -> list[str]:
    wrong: list[str] = []
    with archive.sessions() as session:
        for study in session.execute(select(Study)).scalars():
            series = session.execute(select(Series).where(Series.study_pk == study.pk)).scalars()
            n_series = n_inst = size = 0
            for s in series:
                real = (
                    session.execute(select(Instance.size_bytes).where(Instance.series_pk == s.pk))
                    .scalars()
                    .all()
                )
                if len(real) != s.num_instances or sum(real) != s.size_bytes:
                    wrong.append(study.study_uid)
                n_series += 1 if real else 0
                n_inst += len(real)
                size += sum(real)
            if (n_series, n_inst, size) != (
                study.num_series,
                study.num_instances,
                study.size_bytes,
            ):
                wrong.append(study.study_uid)
    return sorted(set(wrong))


def _repair(archive: Archive, report: CheckReport, pending: set[str]) -> None:
    for key in report.orphan_blobs:
        if key in pending:
            archive.blobs.delete(key)
            report.repaired.append(f"removed blob {key} of a deleted instance")
            continue
        if _referenced(archive, key):  # a store that was in flight has committed since
            continue
        try:
            with archive.blobs.open(key) as fp:
                result = archive.store(fp, source="repair")
        except NotFound:
            continue  # removed meanwhile by the store that wrote it (a lost race)
        # Look again: a store in flight may have committed this very blob meanwhile.
        if _referenced(archive, key):
            report.repaired.append(f"orphan blob {key} was committed by a running store")
            continue
        if result.status is StoreStatus.STORED:
            report.repaired.append(f"re-indexed orphan blob {key} as {result.sop_instance_uid}")
        elif result.status is StoreStatus.DUPLICATE:
            report.repaired.append(f"removed orphan blob {key}: already stored")
        else:
            report.repaired.append(f"removed orphan blob {key}: {result.reason}")
        archive.blobs.delete(key)
    if report.missing_blobs:
        archive.delete_instances(report.missing_blobs)
        report.repaired.append(
            f"removed {len(report.missing_blobs)} index rows whose blob is lost (data lost)"
        )
    if report.wrong_counts:
        _recount(archive, report.wrong_counts)
        report.repaired.append(f"recomputed counts of {len(report.wrong_counts)} studies")
    for uid in report.bad_checksums:
        report.unrepaired.append(f"instance {uid}: blob does not match its checksum")
    if isinstance(archive.blobs, FileBlobStore):
        removed = archive.blobs.clean_temporary()
        if removed:
            report.repaired.append(f"removed {removed} temporary files")


def _referenced(archive: Archive, key: str) -> bool:
    with archive.sessions() as session:
        return (
            session.execute(select(Instance.pk).where(Instance.blob_key == key)).first() is not None
        )


def _recount(archive: Archive, study_uids: list[str]) -> None:
    from sqlalchemy import func, update

    with archive.sessions.begin() as session:
        for uid in study_uids:
            study = session.execute(
                select(Study).where(Study.study_uid == uid).with_for_update()
            ).scalar_one()
            for s in session.execute(select(Series).where(Series.study_pk == study.pk)).scalars():
                count, size = session.execute(
                    select(
                        func.count(Instance.pk), func.coalesce(func.sum(Instance.size_bytes), 0)
                    ).where(Instance.series_pk == s.pk)
                ).one()
                session.execute(
                    update(Series)
                    .where(Series.pk == s.pk)
                    .values(num_instances=count, size_bytes=size)
                )
            archive._prune_empty(session, study.pk)


# ------------------------------------------------------------------ backup / restore

MANIFEST = "cloudfilm-backup.json"


def _require_embedded(settings: Settings) -> None:
    if not settings.resolved_database_url.startswith("sqlite") or settings.storage != "file":
        raise CloudFilmError(
            "backup and restore are for the embedded archive (SQLite + files); for PostgreSQL "
            "use pg_dump/pg_restore and for S3 the object store's replication or versioning "
            "(docs/operations.md)"
        )


def backup_archive(archive: Archive, dest: Path) -> dict[str, Any]:
    """Copy the index (SQLite online backup) and then every blob it references.

    The index is copied first, as one snapshot; blobs are immutable, so copying them after
    the snapshot is consistent. An instance deleted between the two steps is removed from the
    copy as well.
    """
    settings = archive.settings
    _require_embedded(settings)
    if dest.exists() and any(dest.iterdir()):
        raise CloudFilmError(f"{dest} is not empty; back up into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    db_file = settings.resolved_database_url.removeprefix("sqlite:///")
    target_db = dest / "index.sqlite3"
    with sqlite3.connect(db_file) as src, sqlite3.connect(target_db) as dst:
        src.backup(dst)
    copy = sqlite3.connect(target_db)
    keys = [r[0] for r in copy.execute("SELECT blob_key FROM instance")]
    gone: list[str] = []
    total = 0
    assert isinstance(archive.blobs, FileBlobStore)
    for key in keys:
        source = archive.blobs.root / key
        target = dest / "blobs" / key
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(source, target)
        except FileNotFoundError:
            gone.append(key)
            continue
        total += target.stat().st_size
    copy.close()
    backup_settings = Settings(data_dir=dest, database_url=None, min_free_bytes=0)
    if gone:
        with Archive.open(backup_settings, migrate_schema=False) as restored:
            with restored.sessions() as session:
                uids = list(
                    session.execute(
                        select(Instance.sop_instance_uid).where(Instance.blob_key.in_(gone))
                    ).scalars()
                )
            restored.delete_instances(uids)
    os.sync()
    summary = {
        "version": __version__,
        "created_at": datetime.now(UTC).isoformat(),
        "schema": migrate.current_revision(archive.engine),
        "instances": len(keys) - len(gone),
        "bytes": total,
    }
    (dest / MANIFEST).write_text(json.dumps(summary, indent=2))
    return summary


def restore_archive(settings: Settings, source: Path, *, force: bool = False) -> dict[str, Any]:
    """Replace the embedded archive in ``settings.data_dir`` with a backup."""
    _require_embedded(settings)
    manifest = source / MANIFEST
    if not manifest.is_file():
        raise CloudFilmError(f"{source} is not a cloudfilm backup (no {MANIFEST})")
    data_dir = settings.data_dir
    if data_dir.exists() and any(data_dir.iterdir()):
        if not force:
            raise CloudFilmError(f"{data_dir} is not empty; use --force to replace it")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    shutil.copyfile(source / "index.sqlite3", data_dir / "index.sqlite3")
    if (source / "blobs").is_dir():
        shutil.copytree(source / "blobs", data_dir / "blobs")
    os.sync()
    summary: dict[str, Any] = json.loads(manifest.read_text())
    with Archive.open(settings) as archive:
        report = check_archive(archive)
    if not report.consistent_after:
        raise CloudFilmError("restored archive is not consistent: " + "; ".join(report.lines()))
    return summary
