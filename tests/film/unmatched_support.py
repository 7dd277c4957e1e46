"""Helpers of the unmatched-film tests: hospitals with staff of every role, studies sent by
AEs at chosen times, and sheets printed without a confident match."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select, update

from cloudfilm.access.accounts import Accounts
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.dimse import Peer, PeerDirectory, Permission
from cloudfilm.film.compose import CellImage, SheetStyle, compose_sheet
from cloudfilm.film.layout import Orientation, parse_display_format, parse_film_size
from cloudfilm.film.printed import PrintedSheet, keep_printed
from cloudfilm.index.models import Instance, Series, Study
from support.instances import make_dataset, part10

PASSWORD = "a long enough password"
#: username → (role, institution code or None).
STAFF = {
    "tech-a": ("technologist", "hosp-a"),
    "rad-a": ("radiologist", "hosp-a"),
    "admin-a": ("admin", "hosp-a"),
    "ref-a": ("referring", "hosp-a"),
    "tech-b": ("technologist", "hosp-b"),
    "platform": ("platform-admin", None),
}


@dataclass
class Hospitals:
    """Hospital A (AEs CT-A1, MR-A2) and B (CT-B1), their staff and API keys."""

    accounts: Accounts
    pks: dict[str, int]
    cookies: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)


def make_hospitals(archive: Archive, settings: Settings) -> Hospitals:
    accounts = Accounts(archive, settings)
    pks = {code: accounts.add_institution(code).pk for code in ("hosp-a", "hosp-b")}
    found = Hospitals(accounts, pks)
    until = datetime.now(UTC) + timedelta(hours=2)
    for name, (role, institution) in STAFF.items():
        user = accounts.create_user(name, PASSWORD, role, institution)
        found.cookies[name] = accounts.session_cookie(user, until)
    for code in ("hosp-a", "hosp-b"):
        found.keys[code] = accounts.create_api_key(code, "technologist")[1]
    peers = PeerDirectory(archive)
    allowed = frozenset({Permission.STORE, Permission.PRINT})
    for title, institution in (("CT-A1", "hosp-a"), ("MR-A2", "hosp-a"), ("CT-B1", "hosp-b")):
        peers.add(Peer(title, "127.0.0.1", 104, allowed, institution=institution))
    return found


def send(
    archive: Archive,
    ae: str,
    institution_pk: int,
    *,
    minutes_ago: float,
    modality: str = "CT",
    **attrs: Any,
) -> str:
    """Store a one-instance study as if ``ae`` had sent it ``minutes_ago``; its UID."""
    ds = make_dataset(Modality=modality, **attrs)
    result = archive.store(part10(ds), source=f"dimse:{ae}", institution=institution_pk)
    assert result.ok, result.reason
    uid = str(ds.StudyInstanceUID)
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    with archive.sessions.begin() as session:
        series = select(Series.pk).join(Study, Study.pk == Series.study_pk)
        session.execute(
            update(Instance)
            .where(Instance.series_pk.in_(series.where(Study.study_uid == uid)))
            .values(received_at=at)
        )
    return uid


def pattern(seed: int, rows: int = 48, columns: int = 64) -> np.ndarray[Any, Any]:
    y, x = np.mgrid[0:rows, 0:columns]
    return ((x * (3 + seed) + y * (5 + 2 * seed)) % 256).astype(np.uint8)


def print_sheet(
    archive: Archive, ae: str, institution: str = "", *, label: str = "", seed: int = 0
) -> int | None:
    """Print a 2×1 sheet from ``ae`` as the virtual printer does (without the related AEs, so
    that only the AE's own studies count); the unmatched film's id, or None if matched."""
    cells = [CellImage(pattern(seed)), CellImage(pattern(seed + 1))]
    sheet = compose_sheet(
        cells,
        parse_display_format("STANDARD\\2,1"),
        parse_film_size("8INX10IN"),
        Orientation.PORTRAIT,
        style=SheetStyle(dpi=60, annotate=False),
    )
    printed = PrintedSheet(sheet, ae, film_session_label=label, institution=institution)
    return keep_printed(archive, printed).unmatched_id
