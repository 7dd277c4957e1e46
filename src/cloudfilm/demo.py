"""The demo: an embedded archive filled with synthetic studies, ready to browse."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.index.queries import StudyQuery, StudySummary, find_studies
from cloudfilm.sharing.links import ShareFilter, ShareLinks, ShareRequest, ShareState
from cloudfilm.viewer.report import person_name

logger = logging.getLogger(__name__)

#: ``created_by`` of the demo's cloud films (and the label of its API key).
DEMO_CREATOR = "demo"
#: The demo's hospital and its admin user.
DEMO_INSTITUTION = "demo-hospital"
DEMO_ADMIN = "demo-admin"
#: A second hospital, with a radiologist, that a demo patient can consent to show exams to.
DEMO_OTHER_INSTITUTION = "demo-hospital-b"
DEMO_DOCTOR = "demo-doctor-b"
#: The phones on record of the demo patients (made-up numbers: the demo's one-time codes go
#: to the outbox, ``cloudfilm patients outbox``, never to a phone).
DEMO_PHONE_PREFIX = "+86000000000"
#: (modality, slices or frames, charset, seed): one study per line, names in each charset.
DEMO_STUDIES = (
    ("CT", 120, "gb18030", 1),
    ("MR", 24, "ir58", 2),
    ("CR", 1, "utf8", 3),
    ("US", 20, "utf8", 4),
)


def prepare_demo(settings: Settings, console: Console) -> list[str]:
    """Generate and import the demo studies (once); return the lines to print."""
    from cloudfilm.dicom.synth import write_studies
    from cloudfilm.importer import ImportReport, collect, import_items

    source = settings.data_dir / "demo-source"
    with Archive.open(settings) as archive:
        institution, password, key = demo_accounts(archive)
        doctor_password = demo_second_hospital(archive)
        with archive.sessions() as session:
            existing = find_studies(session, StudyQuery(limit=1))
        if not existing:
            console.print("generating demo studies (synthetic phantoms) ...")
            for modality, slices, charset, seed in DEMO_STUDIES:
                write_studies(
                    source / modality.lower(), seed=seed, modality=modality, slices=slices,
                    charset=charset,
                )  # fmt: skip
            report = import_items(
                archive, collect([source]), ImportReport(), institution=institution
            )
            console.print(f"imported {report.counts['stored']} instances")
        with archive.sessions() as session:
            studies = find_studies(session, StudyQuery(limit=50))
        if not existing:  # only the demo's own patients get a made-up phone
            demo_phones(archive, studies)
        films = demo_films(archive, studies)
    base = f"http://{settings.http_host}:{settings.http_port}"
    lines = ["", "[bold]cloudfilm demo[/bold]", f"data folder: {Path(settings.data_dir).resolve()}"]
    for s in studies:
        lines.append(
            f"  {s.patient_name or '(no name)'}  {'/'.join(s.modalities)}  "
            f"{s.description or ''}  {s.instances} images  study {s.study_uid}"
        )
    lines.append("cloud films (the patient page of each demo patient; enter the access code):")
    for film in films:
        lines.append(f"  {film.patient}: {film.link}  access code {film.code}")
    lines += [
        f"staff page (find studies, issue and revoke cloud films): {base}/staff/",
        f"  staff sign-in (as in production): {base}/staff/signin  user {DEMO_ADMIN}  "
        f"password {password}",
        f"API key (DICOMweb as hospital {DEMO_INSTITUTION}): curl -H 'Authorization: Bearer "
        f"{key}' {base}/dicomweb/studies",
        "consent across hospitals: on a cloud film page choose 'Let another hospital see my "
        f"exams', pick {DEMO_OTHER_INSTITUTION}; the one-time code goes to the demo outbox: "
        f"cloudfilm patients outbox --data-dir {settings.data_dir}",
        f"  then sign in as the other hospital's radiologist: user {DEMO_DOCTOR}  "
        f"password {doctor_password}",
        f"patient links across hospitals (staff): {base}/staff/patients",
        f"open {base}/health and {base}/metrics",
        "list studies: cloudfilm studies --data-dir " + str(settings.data_dir),
        "",
    ]
    return lines


def demo_accounts(archive: Archive) -> tuple[int, str, str]:
    """The demo hospital, its admin (a new password each start) and a new API key (earlier
    demo keys revoked): the institution's key, the password and the key to print."""
    from cloudfilm.access.accounts import Accounts
    from cloudfilm.core.errors import NotFound

    accounts = Accounts(archive)
    try:
        institution = accounts.institution(DEMO_INSTITUTION)
    except NotFound:
        institution = accounts.add_institution(DEMO_INSTITUTION, "云胶片示范医院 Demo Hospital")
    password = secrets.token_urlsafe(12)
    try:
        accounts.set_password(DEMO_ADMIN, password)
    except NotFound:
        accounts.create_user(DEMO_ADMIN, password, "admin", DEMO_INSTITUTION, "示范管理员")
    for old in accounts.api_keys():
        if old.label == DEMO_CREATOR and old.revoked_at is None:
            accounts.revoke_api_key(old.key_id)
    _, key = accounts.create_api_key(DEMO_INSTITUTION, "technologist", DEMO_CREATOR, "demo")
    return institution.pk, password, key


def demo_second_hospital(archive: Archive) -> str:
    """The second demo hospital and its radiologist (a new password each start), whom a demo
    patient can consent to; returns the password to print."""
    from cloudfilm.access.accounts import Accounts
    from cloudfilm.core.errors import NotFound

    accounts = Accounts(archive)
    try:
        accounts.institution(DEMO_OTHER_INSTITUTION)
    except NotFound:
        accounts.add_institution(DEMO_OTHER_INSTITUTION, "示范第二医院 Second Demo Hospital")
    password = secrets.token_urlsafe(12)
    try:
        accounts.set_password(DEMO_DOCTOR, password)
    except NotFound:
        accounts.create_user(
            DEMO_DOCTOR, password, "radiologist", DEMO_OTHER_INSTITUTION, "示范医生 Demo Doctor"
        )
    return password


def demo_phones(archive: Archive, studies: list[StudySummary]) -> None:
    """A made-up phone on record for each patient of the demo's own studies that has none,
    so that the patient can consent (the demo's codes go to the outbox notifier)."""
    from sqlalchemy import select

    from cloudfilm.index.models import Patient
    from cloudfilm.patients import pix

    patient_ids = sorted({s.patient_id for s in studies})
    with archive.sessions() as session:
        patients = session.execute(
            select(Patient.patient_id, Patient.issuer).where(Patient.patient_id.in_(patient_ids))
        ).all()
    for number, (patient_id, issuer) in enumerate(sorted(patients), start=1):
        linked = pix.platform_id_of(archive, patient_id, issuer)
        if linked is not None and pix.patient_info(archive, linked).phone_hint:
            continue
        pix.link(
            archive, patient_id, issuer, phone=f"{DEMO_PHONE_PREFIX}{number:02d}",
            source="staff", created_by=DEMO_CREATOR,
        )  # fmt: skip


def demo_settings(settings: Settings) -> Settings:
    """The demo's settings: links point at the demo server's own address, unless
    ``public_base_url`` was set explicitly; one-time codes always go to the outbox (the demo
    patients' phones are made up)."""
    update: dict[str, object] = {"notifier": "outbox"}
    if "public_base_url" not in settings.model_fields_set:
        update["public_base_url"] = f"http://{settings.http_host}:{settings.http_port}"
    return settings.model_copy(update=update)


@dataclass(frozen=True)
class DemoFilm:
    """The cloud film of one demo patient."""

    patient: str
    share_id: str
    link: str
    code: str


def demo_films(archive: Archive, studies: list[StudySummary]) -> list[DemoFilm]:
    """One cloud film per demo patient (every study of the patient; access code; view,
    download and reshare). Issued on the first run; later runs show the same links again
    (revealed with the server key), or issue new ones when those were revoked or expired."""
    links = ShareLinks(archive)
    by_patient: dict[str, list[StudySummary]] = {}
    for summary in studies:
        by_patient.setdefault(summary.patient_id, []).append(summary)
    films = []
    for patient_id, own in by_patient.items():
        film = _existing_film(links, patient_id) or _new_film(links, own)
        films.append(DemoFilm(person_name(own[0].patient_name), *film))
    return films


def _existing_film(links: ShareLinks, patient_id: str) -> tuple[str, str, str] | None:
    active = ShareFilter(patient_id=patient_id, state=ShareState.ACTIVE, roots_only=True)
    for info in links.list(active):
        if info.created_by == DEMO_CREATOR:
            link, code = links.reveal(info.id)
            if link and code:
                return info.id, link, code
    return None


def _new_film(links: ShareLinks, studies: list[StudySummary]) -> tuple[str, str, str]:
    issued = links.issue(
        ShareRequest(
            study_uids=[s.study_uid for s in studies],
            secret="code",
            permissions=("view", "download", "reshare"),
            label="demo",
            created_by=DEMO_CREATOR,
        )
    )
    assert issued.code is not None  # a share protected by a code has one
    return issued.info.id, issued.link, issued.code
