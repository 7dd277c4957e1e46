"""The ``cloudfilm`` command, run as a subprocess on the archive of the ``cli_env`` fixture.

Expected values come from the input files (read with pydicom), never from the archive itself.
Read-only commands that do not depend on each other run in parallel to keep the file quick.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.index import migrate
from support.paths import TESTDATA

pytestmark = pytest.mark.db

FO_DICOM = TESTDATA / "fo-dicom"
CHARSET = FO_DICOM / "charset"
#: pydicom's bundled files, used in place (get_testdata_file may download what is missing).
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
DICOMDIR_TESTS = PYDICOM_FILES / "dicomdirtests"
STUDY_KEYS = {
    "study_uid", "patient_name", "patient_id", "study_date", "modalities", "description",
    "series", "instances",
}  # fmt: skip
#: Names as the character sets of these files spell them (PS3.5 Annex J/K).
CHARSET_NAMES = {
    "chrX1.dcm": "Wang^XiaoDong=王^小東",  # ISO_IR 192 (UTF-8)
    "chrX2.dcm": "Wang^XiaoDong=王^小东",  # GB18030
    "chrGB2312.dcm": "Zhang^XiaoDong=张^小东",  # ISO 2022 IR 58
}

Args = Sequence[str | Path]
#: CLI processes at once (each is mostly Python start-up).
PARALLEL = 4


def pydicom_file(name: str) -> Path:
    path = PYDICOM_FILES / name
    assert path.is_file(), f"pydicom test file {name} is not installed"
    return path


def run(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_parallel(env, args)[0]


def run_parallel(env: dict[str, str], *commands: Args) -> list[subprocess.CompletedProcess[str]]:
    """Run ``cloudfilm`` once per argument list, a few at a time; results in order."""
    env = {**env, "PYTHONIOENCODING": "utf-8", "CLOUDFILM_LOG_LEVEL": "WARNING", "COLUMNS": "500"}

    def one(args: Args) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloudfilm.cli", *map(str, args)],
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=180,
        )

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(one, commands))


def ok_json(result: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    assert result.returncode == code, f"{result.args}: exit {result.returncode}\n{result.stderr}"
    return json.loads(result.stdout)


def counts(studies: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int]]:
    return {uid: (s["series"], s["instances"]) for uid, s in studies.items()}


def blob_count(settings: Settings) -> int:
    root = settings.data_dir / "blobs"
    return sum(
        1 for p in root.rglob("*") if p.is_file() and ".tmp" not in p.relative_to(root).parts
    )


def header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def expected_study(path: Path) -> dict[str, Any]:
    """The ``studies --json`` entry of a one-instance study, from the file."""
    ds = header(path)
    return {
        "study_uid": ds.StudyInstanceUID,
        "patient_name": CHARSET_NAMES.get(path.name, str(ds.get("PatientName", "")) or None),
        "patient_id": ds.get("PatientID", ""),
        "study_date": str(ds.get("StudyDate", "")).replace(".", "") or None,  # ACR-NEMA 1993.04.30
        "modalities": [ds.Modality],
        "description": ds.get("StudyDescription") or None,
        "series": 1,
        "instances": 1,
    }


def make_folder(root: Path, files: dict[str, Path]) -> Path:
    for rel, source in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / rel)
    return root


def dicomdir_layout() -> dict[str, Any]:
    """Patients, studies and series of the files pydicom's dicomdirtests/DICOMDIR references."""
    files = [p for p in DICOMDIR_TESTS.glob("[0-9]*/*/*") if p.is_file()]  # 77654033/CR1/6154 ...
    studies: dict[str, dict[str, Any]] = {}
    for path in files:
        ds = header(path)
        study = studies.setdefault(
            ds.StudyInstanceUID, {"patient": ds.PatientID, "series": {}, "instances": []}
        )
        study["series"].setdefault(ds.SeriesInstanceUID, []).append(ds.SOPInstanceUID)
        study["instances"].append((ds.SOPInstanceUID, path))
    return {"files": files, "studies": studies}


# --------------------------------------------------------------------- import, list, show


@pytest.fixture
def library(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A nested folder of six one-instance studies, plus a duplicate of one of them."""
    files = {
        "ct/ankle/CT-MONO2-16-ankle": FO_DICOM / "CT-MONO2-16-ankle",
        "ct/CT_small.dcm": pydicom_file("CT_small.dcm"),
        "mr/deep/er/MR_small.dcm": pydicom_file("MR_small.dcm"),
        "mr/deep/er/copy/MR_small_implicit.dcm": pydicom_file("MR_small_implicit.dcm"),
        "charset/chrX1.dcm": CHARSET / "chrX1.dcm",
        "charset/chrX2.dcm": CHARSET / "chrX2.dcm",
        "charset/GB/chrGB2312.dcm": CHARSET / "chrGB2312.dcm",
    }
    return make_folder(tmp_path / "library", files), files


def test_import_folder_then_list_filter_and_show(
    cli_env: dict[str, str], library: tuple[Path, dict[str, Path]]
) -> None:
    folder, files = library
    summary = ok_json(run(cli_env, "import", folder, "--json"))
    assert (summary["stored"], summary["duplicate"]) == (6, 1)
    assert (summary["conflict"], summary["rejected"]) == (0, 0)
    assert summary["skipped"] == [] and summary["problems"] == []

    uid = {Path(rel).name: header(path).StudyInstanceUID for rel, path in files.items()}
    ankle, ct, mr_uid = uid["CT-MONO2-16-ankle"], uid["CT_small.dcm"], uid["MR_small.dcm"]
    x1, x2, gb = uid["chrX1.dcm"], uid["chrX2.dcm"], uid["chrGB2312.dcm"]
    queries: dict[tuple[str, ...], set[str]] = {
        ("--name", "*小东*"): {x2, gb},  # wildcard; simplified 东 only (not X1's 東)
        ("--name", "王^小東"): {x1},  # no wildcard: a substring of any component group
        ("--name", "zhang*"): {gb},  # case-insensitive, alphabetic group
        ("--patient-id", "X2EXAMPLE"): {x2},
        ("--from", "19930101", "--to", "19931231"): {ankle},
        ("--from", "20040201"): {mr_uid},  # studies without a date never match a range
        ("--modality", "ct"): {ankle, ct},
    }
    everything, *results, bad_date, shown, unknown = run_parallel(
        cli_env,
        ("studies", "--json"),
        *[("studies", "--json", *q) for q in queries],
        ("studies", "--from", "1993-04-30"),
        ("show", mr_uid, "--json"),
        ("show", "1.2.3.4.5.404", "--json"),
    )
    expected = {
        e["study_uid"]: e for rel, path in files.items() if "copy" not in rel
        for e in [expected_study(path)]
    }  # fmt: skip
    listed = ok_json(everything)
    assert all(set(study) >= STUDY_KEYS for study in listed), listed
    assert {s["study_uid"]: {k: s[k] for k in STUDY_KEYS} for s in listed} == expected
    for query, result in zip(queries, results, strict=True):
        assert {s["study_uid"] for s in ok_json(result)} == queries[query], query
    assert bad_date.returncode == 2 and "YYYYMMDD" in bad_date.stderr
    detail = ok_json(shown)
    mr = header(files["mr/deep/er/MR_small.dcm"])
    assert {k: detail[k] for k in STUDY_KEYS} == expected[mr_uid]
    assert [(s["series_uid"], s["modality"], s["instances"]) for s in detail["series_list"]] == [
        (mr.SeriesInstanceUID, "MR", 1)
    ]
    assert detail["series_list"][0]["series_number"] == int(mr.SeriesNumber)
    assert unknown.returncode == 1 and "not in the archive" in unknown.stderr


def test_import_file_zip_and_exit_codes(cli_env: dict[str, str], tmp_path: Path) -> None:
    zipped = tmp_path / "upload.zip"
    members = {
        "study/MR_small.dcm": pydicom_file("MR_small.dcm"),
        "study/deeper/chrX1.dcm": CHARSET / "chrX1.dcm",
        "CT_small.dcm": pydicom_file("CT_small.dcm"),  # stored before: duplicate
        "media/DICOMDIR": DICOMDIR_TESTS / "DICOMDIR",  # an index: skipped
    }
    with zipfile.ZipFile(zipped, "w") as zf:
        for name, source in members.items():
            zf.write(source, name)
    with_text = make_folder(
        tmp_path / "with-text",
        {"a/CT-MONO2-16-ankle": FO_DICOM / "CT-MONO2-16-ankle", "notes.txt": Path(__file__)},
    )
    single, failed = run_parallel(
        cli_env,
        ("import", pydicom_file("CT_small.dcm"), "--json"),
        ("import", with_text, "--json"),
    )
    assert ok_json(single) | {"seconds": 0, "instances_per_second": 0} == {
        "stored": 1, "duplicate": 0, "conflict": 0, "rejected": 0, "skipped": [],
        "problems": [], "seconds": 0, "instances_per_second": 0,
    }  # fmt: skip
    text_result = ok_json(failed, code=1)
    assert (text_result["stored"], text_result["rejected"]) == (1, 1)
    assert [(p["file"], p["status"]) for p in text_result["problems"]] == [
        (str(with_text / "notes.txt"), "rejected")
    ]
    assert text_result["problems"][0]["reason"]

    zip_result, allowed, gone = run_parallel(
        cli_env,
        ("import", zipped, "--json"),
        ("import", with_text, "--json", "--allow-rejected"),  # stores nothing new
        ("import", pydicom_file("MR_small.dcm"), tmp_path / "no-such-folder", "--json"),
    )
    summary = ok_json(zip_result)
    assert (summary["stored"], summary["duplicate"], summary["rejected"]) == (2, 1, 0)
    assert [s["file"] for s in summary["skipped"]] == [f"{zipped}!media/DICOMDIR"]
    assert "DICOMDIR" in summary["skipped"][0]["reason"]
    again = ok_json(allowed)
    assert (again["stored"], again["duplicate"], again["rejected"]) == (0, 1, 1)
    assert gone.returncode == 2 and "does not exist" in gone.stderr


def test_import_dicomdir_then_delete(cli_env: dict[str, str], settings: Settings) -> None:
    layout = dicomdir_layout()
    studies = layout["studies"]
    summary = ok_json(run(cli_env, "import", DICOMDIR_TESTS / "DICOMDIR", "--json"))
    assert (summary["stored"], summary["rejected"]) == (len(layout["files"]), 0) == (31, 0)
    assert summary["skipped"] == []
    expected = {u: (len(s["series"]), len(s["instances"])) for u, s in studies.items()}
    assert len(expected) == 6 and blob_count(settings) == 31

    def study_in(folder: str) -> str:
        return next(
            u for u, s in studies.items() if any(p.parent.name == folder for _, p in s["instances"])
        )

    # Each delete touches its own study, so they run at once: one instance of Archibald's
    # four-instance CT, one of the three series of his CR study, and Peter's MR study of MR1.
    ct, cr, mr = study_in("CT2"), study_in("CR1"), study_in("MR1")
    assert studies[ct]["patient"] == studies[cr]["patient"] == "77654033"
    assert studies[mr]["patient"] == "98890234"
    gone_uid = studies[ct]["instances"][0][0]
    series_uid = next(iter(studies[cr]["series"]))
    one, series, study = (
        ok_json(r)
        for r in run_parallel(
            cli_env,
            ("delete", "--instance", gone_uid, "--json"),
            ("delete", "--series", series_uid, "--json"),
            ("delete", mr, "--json"),
        )
    )
    assert one["instances"] == 1 and one["bytes"] > 0
    assert series["instances"] == 1
    assert study["instances"] == expected.pop(mr)[1]
    expected[ct], expected[cr] = (1, 3), (2, 2)
    assert blob_count(settings) == 31 - 1 - 1 - study["instances"]

    peter = [u for u in expected if studies[u]["patient"] == "98890234"]
    deleted = ok_json(run(cli_env, "delete", "--patient", "98890234", "--json"))
    assert deleted["instances"] == sum(expected.pop(u)[1] for u in peter)
    assert expected == {ct: (1, 3), cr: (2, 2)}

    # what is left shows every delete: CT and CR counts, and no study of Peter's
    listed, *unknown, usage = run_parallel(
        cli_env,
        ("studies", "--json"),
        ("delete", "1.2.3.404"),
        ("delete", "--instance", gone_uid),  # already deleted
        ("delete", "--patient", "98890234"),  # no studies left
        ("delete", ct, "--series", series_uid),  # two targets: a usage error
    )
    assert counts({s["study_uid"]: s for s in ok_json(listed)}) == expected
    for result in unknown:
        assert result.returncode == 1, (result.args, result.stderr)
        assert "not in the archive" in result.stderr
    assert usage.returncode == 2
    assert blob_count(settings) == 5


# ------------------------------------------------------------ check, backup, restore, db


def test_check_backup_and_restore(
    cli_env: dict[str, str], archive: Archive, settings: Settings, tmp_path: Path
) -> None:
    sources = [
        pydicom_file("CT_small.dcm"),
        pydicom_file("MR_small.dcm"),
        CHARSET / "chrGB2312.dcm",
    ]
    for path in sources:
        assert archive.store(path.read_bytes()).ok
    backup_dir, restored = tmp_path / "backup", tmp_path / "restored"
    if settings.database_url:  # PostgreSQL: backup and restore are for the embedded archive
        backup, restore = run_parallel(
            cli_env, ("backup", backup_dir), ("restore", backup_dir, "--data-dir", restored)
        )
        for result in (backup, restore):
            assert result.returncode == 2, result.stderr
            assert "docs/operations.md" in " ".join(result.stderr.split())
        assert not backup_dir.exists() or not any(backup_dir.iterdir())
        return

    checked, listed, backup = run_parallel(
        cli_env, ("check", "--json"), ("studies", "--json"), ("backup", backup_dir)
    )
    report, original = ok_json(checked), ok_json(listed)
    assert report["consistent"] and report["instances"] == report["blobs"] == len(sources)
    assert len(original) == len(sources)
    assert backup.returncode == 0, backup.stderr
    restore = run(cli_env, "restore", backup_dir, "--data-dir", restored)
    assert restore.returncode == 0, restore.stderr
    listed, checked, refused = run_parallel(
        cli_env,
        ("studies", "--json", "--data-dir", restored),
        ("check", "--json", "--data-dir", restored),
        ("restore", backup_dir, "--data-dir", restored),  # not empty, no --force
    )
    assert ok_json(listed) == original
    restored_report = ok_json(checked)
    assert restored_report["consistent"] and restored_report["instances"] == len(sources)
    assert refused.returncode == 2 and "--force" in refused.stderr


def test_db_upgrade_on_a_fresh_folder_is_idempotent(
    cli_env: dict[str, str], settings: Settings
) -> None:
    head = migrate.head_revision()
    first = run(cli_env, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert f"empty -> {head}" in first.stdout
    second = run(cli_env, "db", "upgrade")
    assert second.returncode == 0, second.stderr
    assert f"{head} -> {head}" in second.stdout
    if not settings.database_url:
        assert (settings.data_dir / "index.sqlite3").is_file()


# ------------------------------------------------------------------------------------ demo


def test_demo_prints_a_cloud_film_per_patient_and_the_staff_page(
    cli_env: dict[str, str], settings: Settings
) -> None:
    from fastapi.testclient import TestClient

    from cloudfilm.access.accounts import Accounts
    from cloudfilm.api.app import create_app
    from cloudfilm.demo import DEMO_STUDIES
    from cloudfilm.patients.notify import outbox
    from cloudfilm.sharing.links import ShareFilter, ShareLinks

    demo = ("demo", "--no-serve", "--data-dir", settings.data_dir, "--port", "8765")
    first = run(cli_env, *demo)
    assert first.returncode == 0, first.stderr
    line = r"^  (.+): http://127\.0\.0\.1:8765/s/([A-Za-z0-9_-]{22})  access code (\d{6})$"
    films = re.findall(line, first.stdout, re.MULTILINE)
    assert len(films) == len(DEMO_STUDIES)  # one synthetic patient per demo study
    assert "http://127.0.0.1:8765/staff/" in first.stdout
    second = run(cli_env, *demo)  # the same links again, not new ones
    assert second.returncode == 0, second.stderr
    assert re.findall(line, second.stdout, re.MULTILINE) == films
    with Archive.open(settings) as archive:
        assert len(ShareLinks(archive).list(ShareFilter())) == len(films)
        client = TestClient(create_app(settings, archive))
        for name, token, code in films:
            asks = client.get(f"/s/{token}?lang=en")
            assert asks.status_code == 200 and 'name="answer"' in asks.text
            unlocked = client.post(
                f"/s/{token}/unlock", data={"answer": code}, follow_redirects=False
            )
            assert unlocked.status_code == 303, unlocked.text
            page = client.get(f"/s/{token}")
            assert page.status_code == 200 and name.split(" (")[0] in page.text
            assert 'name="answer"' not in page.text
        staff = client.get("/staff/")
        assert staff.status_code == 200
        assert len(re.findall(r'<tr data-study-uid="', staff.text)) == len(DEMO_STUDIES)
        # the printed API key works, as the demo hospital's technologist; the earlier is revoked
        keys = re.findall(r"Authorization: Bearer (cfk_[0-9a-f]{12}_[A-Za-z0-9_-]{43})'",
                          first.stdout + second.stdout)  # fmt: skip
        assert len(keys) == 2
        for key, status in zip(keys, (401, 200), strict=True):
            answer = client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == status
        assert len(answer.json()) == len(DEMO_STUDIES)  # the demo studies are the hospital's
        password = re.findall(r"user demo-admin  password (\S+)$", second.stdout, re.MULTILINE)
        assert len(password) == 1
        # the consent flow can be tried: each patient has a phone on record, the second
        # hospital's radiologist signs in with the printed password
        assert "cloudfilm patients outbox --data-dir" in second.stdout
        for _name, token, _code in films:
            consent = client.get(f"/s/{token}/consents?lang=en")
            assert consent.status_code == 200 and "demo-hospital-b" in consent.text
        asked = client.post(
            f"/s/{films[0][1]}/consents",
            data={"institution": "demo-hospital-b", "scope": "link", "days": "30"},
        )
        assert asked.status_code == 201, asked.text
        (sent,) = outbox(archive)  # to the phone the demo put on record
        assert sent.to.startswith("+86000000000") and re.search(r"\b\d{6}\b", sent.text)
        doctor = re.findall(r"user demo-doctor-b  password (\S+)$", second.stdout, re.MULTILINE)
        assert len(doctor) == 1
        assert Accounts(archive).sign_in("demo-doctor-b", doctor[0], "127.0.0.1").user
        assert Accounts(archive).sign_in("demo-admin", password[0], "127.0.0.1").user
