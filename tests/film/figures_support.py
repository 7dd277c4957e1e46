"""A known world for the figures of film saved, and what the figures must say about it.

Two hospitals send exams through peers with departments; modalities print sheets to the virtual
printer (matched, unmatched then attached, unmatched for good); staff compose sheets; some
sheets are printed on real film anyway (``film_print`` jobs done and failed); cloud films are
issued, opened, downloaded and reshared; hospital B sends one of A's exams in too. Every event
is then moved to a chosen instant of the local days (Asia/Shanghai, UTC+8) below:

=========  ==========  ====  ======
day        local date  week  month
=========  ==========  ====  ======
D1         2026-03-30  W14   03
D2         2026-03-31  W14   03
D3         2026-04-01  W14   04
D4         2026-04-06  W15   04
=========  ==========  ====  ======
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydicom.dataset import Dataset
from sqlalchemy import update

from cloudfilm.access.accounts import Accounts
from cloudfilm.archive import Archive
from cloudfilm.core.config import DimsePeerConfig, Settings
from cloudfilm.dimse.peers import Peer, PeerDirectory, Permission
from cloudfilm.film.compose import SheetStyle, compose_sheet
from cloudfilm.film.layout import parse_display_format, parse_film_size, parse_orientation
from cloudfilm.film.printed import PrintedSheet, attach, keep_printed
from cloudfilm.film.sheets import store_sheet
from cloudfilm.index.models import FilmPrint, Instance, PrintedFilm, Study, StudyAccess
from cloudfilm.sharing.accesses import record_access
from cloudfilm.sharing.links import ShareLinks, ShareRequest
from support.instances import make_dataset, part10

ZONE = "Asia/Shanghai"
D1, D2, D3, D4 = date(2026, 3, 30), date(2026, 3, 31), date(2026, 4, 1), date(2026, 4, 6)
FIRST, LAST = D1, D4
#: Prices of the world (11INX14IN has none: it costs the default).
PRICES = {"14INX17IN": 12.5, "8INX10IN": 6.0}
DEFAULT_PRICE = 8.0
#: The department of the configured peer DR-B (Chinese: the CSV must keep it).
RADIOLOGY_ZH = "放射科"


def local(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """An instant of a local day in :data:`ZONE`, in UTC."""
    return datetime.combine(day, time(hour, minute, second), ZoneInfo(ZONE)).astimezone(UTC)


def world_settings(settings: Settings) -> Settings:
    """The test settings with the world's prices, time zone and configured peer."""
    return settings.model_copy(
        update={
            "film_prices": dict(PRICES),
            "film_price_default": DEFAULT_PRICE,
            "film_currency": "CNY",
            "figures_time_zone": ZONE,
            "dimse_peers": [
                DimsePeerConfig(ae_title="DR-B", host="127.0.0.1", allow=["store", "print"],
                                institution="hosp-b", department=RADIOLOGY_ZH)
            ],
        }
    )  # fmt: skip


@dataclass
class World:
    institutions: dict[str, int]
    studies: dict[str, str] = field(default_factory=dict)
    sheets: dict[str, str] = field(default_factory=dict)
    films: dict[str, int] = field(default_factory=dict)
    shares: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)


def _sheet(size: str) -> Any:
    style = SheetStyle(dpi=72, annotate=False)
    return compose_sheet(
        [], parse_display_format("STANDARD\\1,1"), parse_film_size(size),
        parse_orientation("PORTRAIT"), style=style,
    )  # fmt: skip


def _store(archive: Archive, ds: Dataset, source: str, institution: int) -> None:
    result = archive.store(part10(ds), source=source, institution=institution)
    assert result.ok, result.reason


def _exam(archive: Archive, world: World, name: str, modality: str, source: str, inst: str) -> None:
    ds = make_dataset(Modality=modality, PatientID=f"P-{name}", AccessionNumber=f"ACC-{name}")
    _store(archive, ds, source, world.institutions[inst])
    world.studies[name] = str(ds.StudyInstanceUID)
    world.datasets[name] = ds


def _printed(archive: Archive, world: World, ae: str, inst: str, size: str) -> Any:
    printed = PrintedSheet(_sheet(size), calling_ae=ae, institution=inst,
                           institution_pk=world.institutions[inst])  # fmt: skip
    return keep_printed(archive, printed)


def build_world(archive: Archive) -> World:
    """Make every event of the world (see the module notes), then move it to its instant."""
    accounts = Accounts(archive, archive.settings)
    world = World({code: accounts.add_institution(code).pk for code in ("hosp-a", "hosp-b")})
    peers = PeerDirectory(archive)
    for ae, inst, department in (("CT-A", "hosp-a", "radiology"), ("MR-A", "hosp-a", ""),
                                 ("US-B", "hosp-b", "ultrasound")):  # fmt: skip
        perms = frozenset({Permission.STORE, Permission.PRINT})
        peers.add(Peer(ae, "127.0.0.1", 104, perms, institution=inst, department=department))

    # exams (S6 is the evening before the first day, local time: outside the range)
    _exam(archive, world, "S1", "CT", "dimse:CT-A", "hosp-a")
    _exam(archive, world, "S2", "MR", "dimse:MR-A", "hosp-a")
    _exam(archive, world, "S5", "CT", "stow", "hosp-a")
    _exam(archive, world, "S6", "CT", "stow", "hosp-a")
    # sheets printed to the virtual printer: CT-A's go to S1; US-B and DR-B sent nothing yet
    for name in ("P1", "P2"):
        kept = _printed(archive, world, "CT-A", "hosp-a", "14INX17IN")
        assert kept.stored is not None and kept.stored.study_uid == world.studies["S1"], kept
        world.sheets[name] = kept.stored.sop_instance_uid
    for name, ae in (("U1", "US-B"), ("U2", "DR-B")):
        kept = _printed(archive, world, ae, "hosp-b", "8INX10IN")
        assert kept.unmatched_id is not None, kept
        world.films[name] = kept.unmatched_id
    _exam(archive, world, "S3", "US", "dimse:US-B", "hosp-b")
    _exam(archive, world, "S4", "DX", "dimse:DR-B", "hosp-b")
    attached = attach(archive, world.films["U1"], world.studies["S3"])
    world.sheets["U1-attached"] = attached.sop_instance_uid
    # sheets composed in cloudfilm
    world.sheets["C1"] = store_sheet(archive, world.studies["S1"],
                                     _sheet("11INX14IN")).sop_instance_uid  # fmt: skip
    world.sheets["C2"] = store_sheet(archive, world.studies["S2"],
                                     _sheet("14INX17IN")).sop_instance_uid  # fmt: skip
    # hospital B sends A's exam S1 in too: B holds it
    _store(archive, world.datasets["S1"], "dimse:US-B", world.institutions["hosp-b"])
    _move(archive, world)
    _film_prints(archive, world)
    _shares(archive, world)
    return world


def _move(archive: Archive, world: World) -> None:
    """Every event to its instant (stores and prints happened just now)."""
    studies = {
        "S1": local(D1, 9), "S2": local(D1, 23, 30), "S5": local(D2, 0, 30),
        "S6": local(D1, 0) - timedelta(seconds=1),
        "S3": local(D3, 10), "S4": local(D4, 7),
    }  # fmt: skip
    sheets = {"P1": local(D1, 10), "P2": local(D2, 11), "C1": local(D3, 9), "C2": local(D2, 12),
              "U1-attached": local(D4, 23)}  # fmt: skip
    films = {"U1": local(D3, 9, 30), "U2": local(D4, 9)}
    with archive.sessions.begin() as session:
        for name, at in studies.items():
            uid = world.studies[name]
            session.execute(update(Study).where(Study.study_uid == uid).values(created_at=at))
        for name, at in sheets.items():
            uid = world.sheets[name]
            session.execute(
                update(Instance).where(Instance.sop_instance_uid == uid).values(received_at=at)
            )
        for name, at in films.items():
            pk = world.films[name]
            session.execute(update(PrintedFilm).where(PrintedFilm.pk == pk).values(created_at=at))
        session.execute(
            update(StudyAccess)
            .where(StudyAccess.relation == "holder")
            .values(created_at=local(D3, 16))
        )


def _film_prints(archive: Archive, world: World) -> None:
    jobs = [
        FilmPrint(printer="LASER-A", study_uid=world.studies["S1"],
                  sop_instance_uid=world.sheets["P1"], institution="hosp-a",
                  film_size="14INX17IN", copies=2, requested_by="staff:tech", state="done",
                  finished_at=local(D2, 15)),
        FilmPrint(printer="LASER-A", study_uid=world.studies["S1"],
                  sop_instance_uid=world.sheets["P2"], institution="hosp-a",
                  film_size="14INX17IN", copies=1, requested_by="staff:tech", state="failed",
                  finished_at=local(D2, 16)),
        FilmPrint(printer="LASER-B", printed_film_pk=world.films["U2"], institution="hosp-b",
                  film_size="8INX10IN", copies=1, requested_by="rule:DR-B", state="done",
                  finished_at=local(D4, 10)),
        FilmPrint(printer="LASER-B", printed_film_pk=world.films["U2"], institution="hosp-b",
                  film_size="8INX10IN", copies=1, requested_by="rule:DR-B", state="pending"),
        FilmPrint(printer="LASER-A", study_uid=world.studies["S1"], institution="hosp-a",
                  film_size="14INX17IN", copies=5, requested_by="staff:tech", state="done",
                  finished_at=local(date(2026, 4, 20), 10)),
    ]  # fmt: skip
    with archive.sessions.begin() as session:
        session.add_all(jobs)


def _shares(archive: Archive, world: World) -> None:
    links = ShareLinks(archive, archive.settings)
    a, b = world.institutions["hosp-a"], world.institutions["hosp-b"]

    def issue(name: str, study: str, institution: int | None, at: datetime) -> None:
        request = ShareRequest(study_uids=[world.studies[study]],
                               permissions=["view", "download", "reshare"],
                               institution_pk=institution, created_by="user:staff")  # fmt: skip
        world.shares[name] = links.issue(request, at).info.id

    issue("SH1", "S1", a, local(D1, 12))
    issue("SH2", "S3", b, local(D3, 12))
    issue("SH3", "S2", None, local(D4, 12))  # the platform or the CLI: the owner's
    child = links.reshare(world.shares["SH1"], ShareRequest(permissions=["view"]), local(D2, 9))
    world.shares["R1"] = child.info.id
    for name, action, at in (
        ("SH1", "open", local(D1, 13)), ("SH1", "open", local(D2, 8)),
        ("SH1", "download", local(D2, 8, 5)), ("SH1", "renew", local(D2, 8, 10)),
        ("R1", "open", local(D2, 10)), ("R1", "download", local(D2, 10, 5)),
        ("SH2", "open", local(D4, 20)), ("SH2", "open", local(date(2026, 4, 7), 0, 0)),
    ):  # fmt: skip
        record_access(archive, world.shares[name], action, "203.0.113.7", "test", at)
