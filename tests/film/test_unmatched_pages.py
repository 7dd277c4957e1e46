"""The staff page and the API of unmatched printed films (FastAPI TestClient, production
application): who sees which film, the preview, the suggestions, attaching, and every refusal."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from unmatched_support import Hospitals, make_hospitals, print_sheet, send

from cloudfilm.api.app import create_app
from cloudfilm.api.deps import STAFF_COOKIE
from cloudfilm.archive import Archive
from cloudfilm.audit import trail_for
from cloudfilm.core.config import Settings
from cloudfilm.film.printed import printed_film, unmatched_films
from cloudfilm.film.sheets import FILM_SERIES, film_sheets
from cloudfilm.index.models import AuditEvent
from cloudfilm.sharing.csrf import CSRF_COOKIE, CsrfKeys

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
EN = {"Accept-Language": "en"}
PAGE = "/staff/films/unmatched"
SECRET = "x" * 40


@dataclass
class Scene:
    """Hospital A's unmatched film (two studies of CT-A1 sent together), B's, and studies."""

    client: TestClient
    archive: Archive
    hospitals: Hospitals
    film_a: int
    film_b: int
    #: CT-A1's two studies sent three seconds apart (the matcher's candidates).
    first: str
    second: str
    #: An MR study MR-A2 (same hospital) sent 10 minutes before the print.
    mr: str
    #: A CT study CT-A1 sent ten hours ago (outside the window).
    old: str
    #: A study of hospital B that CT-B1 sent after B's print.
    study_b: str

    def as_(self, who: str | None) -> TestClient:
        """The client, signed in as ``who`` (None: nobody)."""
        self.client.cookies.clear()
        if who is not None:
            self.client.cookies.set(STAFF_COOKIE, self.hospitals.cookies[who])
        return self.client


@pytest.fixture
def scene(archive: Archive, settings: Settings) -> Iterator[Scene]:
    production = settings.model_copy(update={"env": "production", "secret_key": SECRET})
    hospitals = make_hospitals(archive, production)
    a, b = hospitals.pks["hosp-a"], hospitals.pks["hosp-b"]
    film_b = print_sheet(archive, "CT-B1", "hosp-b", seed=5)  # B sent nothing yet
    study_b = send(archive, "CT-B1", b, minutes_ago=1, PatientID="PB-1", AccessionNumber="ACC-B")
    old = send(archive, "CT-A1", a, minutes_ago=600, PatientID="PA-OLD")
    mr = send(archive, "MR-A2", a, minutes_ago=10, modality="MR", PatientID="PA-MR",
              PatientName="Li^Si", AccessionNumber="ACC-MR")  # fmt: skip
    first = send(archive, "CT-A1", a, minutes_ago=20.05, PatientID="PA-1",
                 PatientName="Zhang^San=张^三", AccessionNumber="ACC-1",
                 SpecificCharacterSet="ISO_IR 192")  # fmt: skip
    second = send(archive, "CT-A1", a, minutes_ago=20, PatientID="PA-2",
                  PatientName="Wang^Wu", AccessionNumber="ACC-2")  # fmt: skip
    film_a = print_sheet(archive, "CT-A1", "hosp-a", label="exam 7")
    assert film_a is not None and film_b is not None
    assert set(printed_film(archive, film_a).candidates) == {first, second}
    with TestClient(create_app(production, archive), headers=EN) as client:
        yield Scene(client, archive, hospitals, film_a, film_b, first, second, mr, old, study_b)


def film_ids(page: httpx.Response) -> list[int]:
    return [int(i) for i in re.findall(r'data-film-id="(\d+)"', page.text)]


def suggested(page: httpx.Response, film_id: int) -> list[str]:
    """The suggested studies of one film, in the page's order."""
    section = page.text.split(f'id="film-{film_id}"', 1)[1].split("</section>", 1)[0]
    return re.findall(r'<tr data-study-uid="([^"]+)">', section)


def csrf_of(page: httpx.Response, film_id: int) -> str:
    match = re.search(
        rf'<form[^>]*id="attach-{film_id}"[^>]*>\s*'
        r'<input type="hidden" name="csrf_token" value="([^"]+)">',
        page.text,
    )
    assert match, f"no attach form of film {film_id}"
    return match.group(1)


def error_of(page: httpx.Response) -> str:
    match = re.search(r'id="staff-error">([^<]*)<', page.text)
    assert match, page.text[:2000]
    return match.group(1)


def attach(scene: Scene, who: str, film_id: int | str, **fields: str) -> httpx.Response:
    """Post the attach form of ``film_id`` as ``who``, with the token the page gives its
    attach forms (made here: the list may hold no form when no film waits)."""
    client = scene.as_(who)
    assert client.get(PAGE).status_code in (200, 403)  # sets the CSRF cookie
    nonce = client.cookies.get(CSRF_COOKIE)
    assert nonce
    form = {"csrf_token": CsrfKeys(SECRET).token(nonce, "attach-film"), **fields}
    return client.post(f"{PAGE}/{film_id}/attach", data=form, follow_redirects=False)


# ----------------------------------------------------------------------------------- list


def test_each_institution_sees_its_own_films_with_suggestions(scene: Scene) -> None:
    page = scene.as_("tech-a").get(PAGE)
    assert page.status_code == 200, page.text
    assert film_ids(page) == [scene.film_a]
    # the matcher's candidates first (the later one first), then the MR of the same
    # hospital; not the old study, not hospital B's
    assert suggested(page, scene.film_a) == [scene.second, scene.first, scene.mr]
    text = page.text
    assert "张三 (Zhang San)" in text and "PA-1" in text and "ACC-1" in text
    assert "CT-A1" in text and "exam 7" in text and "STANDARD\\2,1" in text
    assert "8INX10IN" in text and "sent several studies" in text
    assert f'src="/staff/films/unmatched/{scene.film_a}.png"' in text
    assert "20 min before the print" in text and "10 min before the print" in text
    assert "sent by MR-A2" in text
    assert 'id="nav-films"' in text
    assert scene.study_b not in text and scene.old not in text

    b = scene.as_("tech-b").get(PAGE)
    assert film_ids(b) == [scene.film_b]
    assert suggested(b, scene.film_b) == [scene.study_b]  # sent a minute after B's print
    assert scene.first not in b.text

    everything = scene.as_("platform").get(PAGE)
    assert film_ids(everything) == [scene.film_a, scene.film_b]  # newest first


def test_page_in_chinese(scene: Scene) -> None:
    page = scene.as_("tech-a").get(PAGE, headers={"Accept-Language": "zh-CN"})
    assert page.status_code == 200
    assert "<h1>未匹配的打印胶片</h1>" in page.text and "关联到此检查" in page.text
    assert "打印前 20 分钟" in page.text
    assert "CT-A1 在 10 秒内发送了多个检查" in page.text


def test_the_preview_is_the_printed_sheet_and_private(scene: Scene) -> None:
    client = scene.as_("tech-a")
    png = client.get(f"{PAGE}/{scene.film_a}.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    assert png.headers["cache-control"] == "private, no-store"
    assert png.headers["x-content-type-options"] == "nosniff"
    hidden = client.get(f"{PAGE}/{scene.film_b}.png")  # hospital B's
    missing = client.get(f"{PAGE}/99999.png")
    assert hidden.status_code == missing.status_code == 404
    assert error_of(hidden) == f"no printed film {scene.film_b}"
    assert error_of(missing) == "no printed film 99999"
    assert scene.as_("platform").get(f"{PAGE}/{scene.film_b}.png").status_code == 200
    assert scene.as_("ref-a").get(f"{PAGE}/{scene.film_a}.png").status_code == 403
    signin = scene.as_(None).get(f"{PAGE}/{scene.film_a}.png", follow_redirects=False)
    assert signin.status_code == 303 and "/staff/signin" in signin.headers["location"]
    client = scene.as_("tech-a")
    for bad in ("abc", "0", "-1", "99999999999"):
        assert client.get(f"{PAGE}/{bad}.png").status_code == 400, bad


# --------------------------------------------------------------------------------- attach


def test_attach_a_suggested_study(scene: Scene) -> None:
    done = attach(scene, "tech-a", scene.film_a, study_uid=scene.first)
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"{PAGE}?attached={scene.film_a}"
    after = scene.client.get(done.headers["location"])
    assert after.status_code == 200
    assert 'id="attached-notice"' in after.text and "张三 (Zhang San)" in after.text
    assert f'href="/staff/studies/{scene.first}" id="attached-study"' in after.text
    assert film_ids(after) == []  # no longer waiting
    (sheet,) = film_sheets(scene.archive, scene.first)
    film = printed_film(scene.archive, scene.film_a)
    assert film.attached_study_uid == scene.first
    assert film.attached_sop_instance_uid == sheet.sop_instance_uid
    study = scene.client.get(f"/staff/studies/{scene.first}")
    assert f"<td>{FILM_SERIES}</td>" in study.text
    assert trail_for(scene.archive).flush(timeout=30)
    with scene.archive.engine.connect() as conn:
        rows = conn.execute(
            select(AuditEvent.actor_id, AuditEvent.study_uid, AuditEvent.patient_id,
                   AuditEvent.detail).where(AuditEvent.action == "store-film")
        ).all()  # fmt: skip
    assert len(rows) == 1
    actor, study_uid, patient_id, detail = rows[0]
    assert (study_uid, patient_id) == (scene.first, "PA-1")
    assert actor and f"printed film {scene.film_a} from CT-A1" in detail


def test_attach_by_typed_accession_or_uid(scene: Scene) -> None:
    by_accession = attach(scene, "rad-a", scene.film_a, target="ACC-MR")  # radiologists may
    assert by_accession.status_code == 303, by_accession.text
    assert printed_film(scene.archive, scene.film_a).attached_study_uid == scene.mr
    film = print_sheet(scene.archive, "CT-A1", "hosp-a", seed=3)
    assert film is not None
    # typed wins over the chosen suggestion
    by_uid = attach(scene, "admin-a", film, study_uid=scene.second, target=f" {scene.old} ")
    assert by_uid.status_code == 303, by_uid.text
    assert printed_film(scene.archive, film).attached_study_uid == scene.old
    assert len(film_sheets(scene.archive, scene.old)) == 1


#: Bad attach forms: what is sent, the status, what the page says.
BAD_FORMS: list[tuple[dict[str, str], int, str]] = [
    ({}, 400, "choose a suggested study"),
    ({"target": "1.2..3"}, 400, "is not a valid Study Instance UID"),
    ({"target": "1.2.3."}, 400, "is not a valid Study Instance UID"),
    ({"study_uid": "1.2.x"}, 400, "is not a valid Study Instance UID"),
    ({"target": "ACC\x01"}, 400, "no control characters"),
    ({"target": "A" * 65}, 400, "at most 64 characters"),
    ({"target": "1.2.826.0.1.999"}, 404, "study 1.2.826.0.1.999 not found"),
    ({"target": "NO-SUCH-ACC"}, 404, "no study with accession number NO-SUCH-ACC"),
    ({"target": "ACC-B"}, 404, "no study with accession number ACC-B"),  # hospital B's
]


def test_bad_input_is_said_on_the_page(scene: Scene) -> None:
    for fields, status, message in BAD_FORMS:
        answer = attach(scene, "tech-a", scene.film_a, **fields)
        assert answer.status_code == status, (fields, answer.text[:2000])
        assert message in error_of(answer), fields
        assert film_ids(answer) == [scene.film_a]  # the list again, the film still waiting
    assert printed_film(scene.archive, scene.film_a).attached_study_uid is None


def test_another_hospitals_study_answers_like_a_missing_one(scene: Scene) -> None:
    hidden = attach(scene, "tech-a", scene.film_a, target=scene.study_b)
    missing = attach(scene, "tech-a", scene.film_a, target="1.2.826.0.1.999")
    assert hidden.status_code == missing.status_code == 404
    assert error_of(hidden).replace(scene.study_b, "U") == error_of(missing).replace(
        "1.2.826.0.1.999", "U"
    )
    assert film_sheets(scene.archive, scene.study_b) == []


def test_already_attached_and_ambiguous_accession_conflict(scene: Scene) -> None:
    assert attach(scene, "tech-a", scene.film_a, study_uid=scene.first).status_code == 303
    again = attach(scene, "tech-a", scene.film_a, study_uid=scene.second)
    assert again.status_code == 409  # no longer listed, but the reason is said
    assert (
        error_of(again)
        == f"printed film {scene.film_a} is already attached to a study ({scene.first})"
    )
    assert len(film_sheets(scene.archive, scene.first)) == 1
    assert film_sheets(scene.archive, scene.second) == []
    a = scene.hospitals.pks["hosp-a"]
    send(scene.archive, "CT-A1", a, minutes_ago=500, AccessionNumber="ACC-TWICE")
    send(scene.archive, "CT-A1", a, minutes_ago=400, AccessionNumber="ACC-TWICE")
    film = print_sheet(scene.archive, "CT-A1", "hosp-a", seed=4)
    assert film is not None
    twice = attach(scene, "tech-a", film, target="ACC-TWICE")
    assert twice.status_code == 409
    assert "2 studies have accession number ACC-TWICE" in error_of(twice)


def test_unknown_and_other_hospitals_films_are_not_found(scene: Scene) -> None:
    other = attach(scene, "tech-a", scene.film_b, study_uid=scene.first)
    missing = attach(scene, "tech-a", 99999, study_uid=scene.first)
    assert other.status_code == missing.status_code == 404
    assert error_of(other) == f"no printed film {scene.film_b}"
    assert error_of(missing) == "no printed film 99999"
    assert printed_film(scene.archive, scene.film_b).attached_study_uid is None
    for bad in ("abc", "0"):
        answer = attach(scene, "tech-a", bad, study_uid=scene.first)
        assert answer.status_code == 400


def test_csrf_refused(scene: Scene) -> None:
    client = scene.as_("tech-a")
    client.get(PAGE)  # the CSRF cookie
    url = f"{PAGE}/{scene.film_a}/attach"
    bare = client.post(url, data={"study_uid": scene.first})
    assert bare.status_code == 403 and "This form has expired" in bare.text
    issue_token = re.search(
        r'name="csrf_token" value="([^"]+)"', client.get(f"/staff/studies/{scene.first}").text
    )
    assert issue_token  # a token of another form (the issue form) does not do
    other = client.post(url, data={"csrf_token": issue_token.group(1), "study_uid": scene.first})
    assert other.status_code == 403
    page = client.get(PAGE)
    client.cookies.delete("cloudfilm_staff_csrf")
    no_cookie = client.post(
        url, data={"csrf_token": csrf_of(page, scene.film_a), "study_uid": scene.first}
    )
    assert no_cookie.status_code == 403
    assert unmatched_films(scene.archive, institution="hosp-a")[0].attached_study_uid is None


def test_roles(scene: Scene) -> None:
    for who in ("tech-a", "rad-a", "admin-a", "platform"):
        assert scene.as_(who).get(PAGE).status_code == 200, who
    assert scene.as_("ref-a").get(PAGE).status_code == 403
    refused = attach(scene, "ref-a", scene.film_a, study_uid=scene.first)  # a valid token
    assert refused.status_code == 403
    assert "only hospital staff may use these pages" in error_of(refused)
    assert scene.as_(None).get(PAGE, follow_redirects=False).status_code == 303
    nobody = scene.as_(None).post(f"{PAGE}/{scene.film_a}/attach", data={})
    assert nobody.status_code == 401
    assert printed_film(scene.archive, scene.film_a).attached_study_uid is None


# ------------------------------------------------------------------------------------ API


def api(scene: Scene, hospital: str) -> dict[str, str]:
    scene.client.cookies.clear()
    return {"Authorization": f"Bearer {scene.hospitals.keys[hospital]}"}


def test_api_lists_and_attaches(scene: Scene) -> None:
    listed = scene.client.get("/api/films/unmatched", headers=api(scene, "hosp-a"))
    assert listed.status_code == 200
    (film,) = listed.json()
    assert film["id"] == scene.film_a and film["calling_ae"] == "CT-A1"
    assert [s["study_uid"] for s in film["suggestions"]] == [scene.second, scene.first, scene.mr]
    mr: dict[str, Any] = film["suggestions"][2]
    assert mr["why"] == "institution" and mr["sent_by"] == ["MR-A2"]
    assert mr["patient_id"] == "PA-MR" and mr["modalities"] == ["MR"]
    png = scene.client.get(
        film["png"].removeprefix("http://testserver"), headers=api(scene, "hosp-a")
    )
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert png.headers["cache-control"] == "private, no-store"
    url = f"/api/films/unmatched/{scene.film_a}/attach"
    assert (
        scene.client.post(
            url, headers=api(scene, "hosp-b"), json={"study_uid": scene.first}
        ).status_code
        == 404
    )
    for body, status in (
        (None, 400),
        ({}, 400),
        ({"study_uid": "1.2.x"}, 400),
        ({"study_uid": scene.first, "accession_number": "ACC-1"}, 400),
        ({"accession_number": "ACC-B"}, 404),
        ({"study_uid": scene.study_b}, 404),
    ):
        answer = scene.client.post(url, headers=api(scene, "hosp-a"), json=body)
        assert answer.status_code == status, (body, answer.text)
    done = scene.client.post(url, headers=api(scene, "hosp-a"), json={"accession_number": "ACC-2"})
    assert done.status_code == 201, done.text
    stored = done.json()
    assert stored["study_uid"] == scene.second and stored["patient_id"] == "PA-2"
    assert stored["links"]["png"].endswith(f"/films/{stored['sop_instance_uid']}.png")
    again = scene.client.post(url, headers=api(scene, "hosp-a"), json={"study_uid": scene.first})
    assert again.status_code == 409 and "already attached" in again.json()["detail"]
    assert scene.client.get("/api/films/unmatched", headers=api(scene, "hosp-a")).json() == []
    hidden = scene.client.get(
        f"/api/films/unmatched/{scene.film_b}.png", headers=api(scene, "hosp-a")
    )
    assert hidden.status_code == 404


# ---------------------------------------------------------------------------- suggestions


def test_suggestions_rank_the_printing_ae_then_its_modality_then_time(
    archive: Archive, settings: Settings
) -> None:
    """A film from an AE that sent nothing just now: studies of the calling AE first, then of
    its hospital's AEs of the modality it sends (CT), then the closest in time; nothing
    outside the window, nothing of another hospital."""
    from cloudfilm.api.deps import Principal
    from cloudfilm.film.unmatched import suggest_studies, visible_films

    hospitals = make_hospitals(archive, settings)
    a, b = hospitals.pks["hosp-a"], hospitals.pks["hosp-b"]
    send(archive, "CT-A1", a, minutes_ago=2000)  # CT-A1 sends CT (long ago)
    film = print_sheet(archive, "CT-A1", "hosp-a")
    assert film is not None
    own_late = send(archive, "CT-A1", a, minutes_ago=-90)  # after the print, still in
    mr_close = send(archive, "MR-A2", a, minutes_ago=1, modality="MR")
    ct_far = send(archive, "MR-A2", a, minutes_ago=100, modality="CT")
    send(archive, "MR-A2", a, minutes_ago=300, modality="CT")  # outside the window
    send(archive, "CT-B1", b, minutes_ago=1)  # another hospital's
    staff = Principal("user", "tech-a", permissions=frozenset({"shares"}), institution="hosp-a",
                      institution_pk=a, sees=lambda uid: True)  # fmt: skip
    (waiting,) = visible_films(archive, staff)
    assert waiting.id == film and waiting.candidates == []
    found = suggest_studies(archive, staff, waiting)
    assert [s.study_uid for s in found] == [own_late, ct_far, mr_close]
    assert [s.why for s in found] == ["calling-ae", "institution", "institution"]
    assert [s.same_modality for s in found] == [True, True, False]
    assert found[0].seconds_from_print is not None and found[0].seconds_from_print > 0
    assert found[2].sent_by == ("MR-A2",)


def test_the_reason_is_said_in_the_readers_language(scene: Scene) -> None:
    lonely = print_sheet(scene.archive, "XR-LONE", "hosp-a", seed=8)  # sent nothing
    page = scene.as_("tech-a").get(PAGE)
    assert "XR-LONE sent no study in the 120 minutes before the print." in page.text
    zh = scene.client.get(PAGE, headers={"Accept-Language": "zh-CN"})
    assert "打印前 120 分钟内 XR-LONE 未发送任何检查。" in zh.text
    assert lonely is not None and lonely in film_ids(page)
