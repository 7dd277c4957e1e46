"""Printing on real film: DCMTK's dcmprscp as the film printer, reached by staff "print on
film" (REST and the staff page) and by pass-through rules for sheets a modality printed."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dimse_support import Dcmtk, free_port
from fastapi.testclient import TestClient
from PIL import Image
from print_support import FilmPrinter, start_film_printer
from sqlalchemy import select
from test_dimse_print import MODALITY, PrintJob, pattern, run_print, send_study

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive
from cloudfilm.audit import trail_for
from cloudfilm.core.config import FilmPassThroughConfig
from cloudfilm.dicom.synth import generate_studies
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory, Permission, jobs
from cloudfilm.dimse.print_queue import FilmPrintWorker
from cloudfilm.dimse.scu import scu_entity
from cloudfilm.film.layout import parse_display_format, parse_film_size
from cloudfilm.film.passthrough import film_prints
from cloudfilm.film.printed import unmatched_film_png
from cloudfilm.film.sheets import FilmRequest, film_image, film_sheets, store_film
from cloudfilm.index.models import AuditEvent, FilmPrint
from support.instances import part10

pytestmark = pytest.mark.db


@pytest.fixture
def film_printer(dcmtk: Dcmtk, tmp_path: Path, archive: Archive) -> Iterator[FilmPrinter]:
    """dcmprscp, known to the archive as the peer FILMPRINTER (a destination only)."""
    printer = start_film_printer(dcmtk, tmp_path / "filmprinter")
    PeerDirectory(archive).add(Peer("FILMPRINTER", "127.0.0.1", printer.port, frozenset()))
    try:
        yield printer
    finally:
        printer.stop()


def with_settings(archive: Archive, **changes: Any) -> None:
    archive.settings = archive.settings.model_copy(update=changes)


def worker(archive: Archive) -> FilmPrintWorker:
    return FilmPrintWorker(archive, scu_entity(archive.settings, "CLOUDFILM"), "test")


def study_with_sheet(archive: Archive) -> tuple[str, str]:
    """A stored CT study with one composed 2×2 sheet; (study UID, sheet UID)."""
    datasets = list(generate_studies(seed=7, slices=4, rows=64, columns=64))
    for ds in datasets:
        archive.store(part10(ds), source="test")
    study = str(datasets[0].StudyInstanceUID)
    request = FilmRequest(parse_display_format("STANDARD\\2,2"), parse_film_size("11INX14IN"))
    stored = store_film(archive, study, request)
    return study, stored.sop_instance_uid


def wait_done(archive: Archive, count: int = 1) -> None:
    """Wait for the server's own film printing worker to finish ``count`` jobs."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [job.state for job in film_prints(archive)]
        if len(states) == count and all(s in ("done", "failed") for s in states):
            assert states == ["done"] * count, film_prints(archive)
            return
        time.sleep(0.05)
    raise AssertionError(f"not printed: {film_prints(archive)}")


def printed_pixels(printer: FilmPrinter, count: int = 1) -> list[np.ndarray[Any, Any]]:
    found = printer.printed()
    assert len(found) == count, [p.SOPInstanceUID for p in found]
    return [np.asarray(p.pixel_array) for p in found]


def sheet_gray(archive: Archive, study: str, sheet: str) -> np.ndarray[Any, Any]:
    return np.asarray(film_image(archive, study, sheet).image.convert("L"))


def film_box(printer: FilmPrinter) -> Any:
    (stored,) = printer.stored_prints()
    return stored.FilmBoxContentSequence[0]


# ------------------------------------------------------------------------ staff, over REST


def test_staff_print_a_study_sheet_on_film(archive: Archive, film_printer: FilmPrinter) -> None:
    with_settings(archive, film_printer="FILMPRINTER")
    study, sheet = study_with_sheet(archive)
    with TestClient(create_app(archive.settings, archive)) as client:
        answer = client.post(f"/api/studies/{study}/film-prints", json={"copies": 2})
        assert answer.status_code == 202, answer.text
        assert answer.json()["queued"] == 1
        (job,) = answer.json()["jobs"]
        assert (job["state"], job["sop_instance_uid"], job["film_size"]) == (
            "pending", sheet, "11INX14IN",
        )  # fmt: skip
        assert worker(archive).step()
        listed = client.get(f"/api/studies/{study}/film-prints").json()
    assert [j["state"] for j in listed] == ["done"]
    (pixels,) = printed_pixels(film_printer)
    assert np.array_equal(pixels, sheet_gray(archive, study, sheet))  # the sheet, unchanged
    box = film_box(film_printer)
    assert box.ImageDisplayFormat == "STANDARD\\1,1"
    assert (box.FilmSizeID, box.FilmOrientation) == ("11INX14IN", "PORTRAIT")
    trail_for(archive).flush()
    with archive.sessions() as session:
        events = session.execute(
            select(AuditEvent.outcome, AuditEvent.study_uid).where(
                AuditEvent.action == "print-on-film"
            )
        ).all()
    assert events == [("success", study)]
    assert not worker(archive).step()  # nothing more is due


def test_print_request_errors(archive: Archive, film_printer: FilmPrinter) -> None:
    study, sheet = study_with_sheet(archive)
    with TestClient(create_app(archive.settings, archive)) as client:
        url = f"/api/studies/{study}/film-prints"
        refused = client.post(url, json={})
        assert refused.status_code == 400 and "film_printer" in refused.json()["detail"]
        assert client.post(url, json={"printer": "NOSUCHPRINTER"}).status_code == 400
        named = client.post(url, json={"printer": "FILMPRINTER", "sheets": ["1.2.3.4"]})
        assert named.status_code == 400 and "not a film sheet" in named.json()["detail"]
        assert client.post(url, json={"printer": "FILMPRINTER", "copies": 0}).status_code == 400
        assert client.post(url, json={"printer": "FILMPRINTER", "x": 1}).status_code == 400
        assert client.post(url, content=b"{not json").status_code == 400
        assert (
            client.post(url, json={"printer": "FILMPRINTER", "sheets": ["a'b"]}).status_code == 400
        )
        missing = "/api/studies/1.2.3.999/film-prints"
        assert client.post(missing, json={"printer": "FILMPRINTER"}).status_code == 404
        assert client.get(missing).status_code == 404
        assert (
            client.post(url, json={"printer": "FILMPRINTER", "sheets": [sheet]}).status_code == 202
        )
    assert len(film_prints(archive, study_uid=study)) == 1


def test_a_printer_that_is_down_gets_the_sheet_later(
    dcmtk: Dcmtk, tmp_path: Path, archive: Archive
) -> None:
    port = free_port()
    PeerDirectory(archive).add(Peer("FILMPRINTER", "127.0.0.1", port, frozenset()))
    with_settings(archive, film_printer="FILMPRINTER", dimse_retry_base_seconds=60)
    study, sheet = study_with_sheet(archive)
    with TestClient(create_app(archive.settings, archive)) as client:
        assert client.post(f"/api/studies/{study}/film-prints").status_code == 202
    assert worker(archive).step()
    (job,) = film_prints(archive, study_uid=study)
    assert (job.state, job.attempts) == ("pending", 1)
    assert "could not be reached" in job.last_error
    assert not worker(archive).step()  # waits out its back-off
    printer = start_film_printer(dcmtk, tmp_path / "later", port=port)
    try:
        assert jobs.retry(archive, FilmPrint) == 1
        assert worker(archive).step()
        (job,) = film_prints(archive, study_uid=study)
        assert job.state == "done"
        (pixels,) = printed_pixels(printer)
        assert np.array_equal(pixels, sheet_gray(archive, study, sheet))
    finally:
        printer.stop()


def test_unknown_printer_fails_the_job_at_once(archive: Archive) -> None:
    study, _sheet = study_with_sheet(archive)
    PeerDirectory(archive).add(Peer("GONE", "127.0.0.1", 104, frozenset()))
    with TestClient(create_app(archive.settings, archive)) as client:
        answer = client.post(f"/api/studies/{study}/film-prints", json={"printer": "GONE"})
        assert answer.status_code == 202
    PeerDirectory(archive).remove("GONE")
    assert worker(archive).step()
    (job,) = film_prints(archive, study_uid=study)
    assert job.state == "failed" and "not a known peer" in job.last_error


# ------------------------------------------------------------------------ the staff page


def test_staff_page_prints_ticked_sheets(archive: Archive, film_printer: FilmPrinter) -> None:
    with_settings(archive, film_printer="FILMPRINTER")
    study, first = study_with_sheet(archive)
    one = FilmRequest(parse_display_format("STANDARD\\1,1"), parse_film_size("14INX17IN"))
    second = store_film(archive, study, one).sop_instance_uid
    with TestClient(create_app(archive.settings, archive)) as client:
        page = client.get(f"/staff/studies/{study}")
        assert page.status_code == 200
        assert "Print on film (FILMPRINTER)" in page.text or "打印实体胶片" in page.text
        token = re.search(
            r'id="film-print-form">\s*<input type="hidden" name="csrf_token" value="([^"]+)"',
            page.text,
        )
        assert token is not None
        url = f"/staff/studies/{study}/film-prints"
        form = {"csrf_token": token.group(1), "sheet-2": second, "copies": "1"}
        refused = client.post(url, data={**form, "csrf_token": "forged"}, follow_redirects=False)
        assert refused.status_code == 403
        bad = client.post(url, data={**form, "copies": "11"}, follow_redirects=False)
        assert bad.status_code == 400
        done = client.post(url, data=form, follow_redirects=False)
        assert done.status_code == 303
        assert done.headers["location"].endswith(f"/staff/studies/{study}?film_queued=1#films")
        jobs_now = film_prints(archive, study_uid=study)
        assert [j.sop_instance_uid for j in jobs_now] == [second]
        assert worker(archive).step()
        page = client.get(f"/staff/studies/{study}", headers={"Accept-Language": "en"})
        assert 'class="job-state">printed<' in page.text
    (pixels,) = printed_pixels(film_printer)
    assert np.array_equal(pixels, sheet_gray(archive, study, second))
    assert first != second


# ------------------------------------------------------------------- pass-through rules


S, P = Permission.STORE, Permission.PRINT


@pytest.fixture
def modality(dimse: DimseServer, archive: Archive) -> DimseServer:
    PeerDirectory(archive).add(Peer(MODALITY, "127.0.0.1", 104, frozenset({S, P})))
    return dimse


def test_pass_through_prints_what_the_modality_printed(
    archive: Archive, modality: DimseServer, film_printer: FilmPrinter
) -> None:
    rule = FilmPassThroughConfig(printer="FILMPRINTER", from_ae=MODALITY, copies=1)
    other = FilmPassThroughConfig(printer="FILMPRINTER", from_ae="SOMEONEELSE")
    with_settings(archive, print_pass_through=[other, rule])
    study = send_study(modality.port, MODALITY, seed=31)
    job = PrintJob([pattern(i) for i in range(2)], "STANDARD\\2,1", "LANDSCAPE", "14INX17IN")
    assert run_print(modality.port, job).statuses["print"] == 0x0000
    (sheet,) = film_sheets(archive, study)
    (queued,) = film_prints(archive)
    assert (queued.sop_instance_uid, queued.requested_by) == (sheet.sop_instance_uid,
                                                              f"rule:{MODALITY}")  # fmt: skip
    wait_done(archive)  # by the server's worker, woken when the sheet was queued
    (pixels,) = printed_pixels(film_printer)
    assert np.array_equal(pixels, sheet_gray(archive, study, sheet.sop_instance_uid))
    box = film_box(film_printer)
    assert (box.FilmSizeID, box.FilmOrientation) == ("14INX17IN", "LANDSCAPE")


def test_pass_through_prints_an_unmatched_sheet_too(
    archive: Archive, modality: DimseServer, film_printer: FilmPrinter
) -> None:
    with_settings(archive, print_pass_through=[FilmPassThroughConfig(printer="FILMPRINTER")])
    job = PrintJob([pattern(3)], "STANDARD\\1,1", "PORTRAIT", "8INX10IN")
    assert run_print(modality.port, job).statuses["print"] == 0x0000  # nothing sent: unmatched
    (queued,) = film_prints(archive)
    assert queued.printed_film_id is not None and queued.sop_instance_uid is None
    wait_done(archive)
    (pixels,) = printed_pixels(film_printer)

    kept = Image.open(io.BytesIO(unmatched_film_png(archive, queued.printed_film_id)))
    assert np.array_equal(pixels, np.asarray(kept.convert("L")))
    assert film_box(film_printer).FilmSizeID == "8INX10IN"


def test_no_rule_no_film(archive: Archive, modality: DimseServer) -> None:
    send_study(modality.port, MODALITY, seed=32)
    job = PrintJob([pattern(1)], "STANDARD\\1,1")
    assert run_print(modality.port, job).statuses["print"] == 0x0000
    assert film_prints(archive) == []
