"""Users and API keys at the doors: each sees its institution's studies, nothing else.

A production server (no development principal) on one archive holding a study of hospital A
and one of hospital B; callers are API keys (``Authorization: Bearer``) and a signed-in user
(the staff cookie), through ``dicomweb-client`` and plain HTTP.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from doors_support import World

from cloudfilm.access.accounts import utcnow
from cloudfilm.api.deps import STAFF_COOKIE
from cloudfilm.archive import Archive
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db


def _studies(world: World, headers: dict[str, str]) -> set[str]:
    answer = world.client.get("/dicomweb/studies", headers=headers)
    assert answer.status_code == 200, answer.text
    return {s["0020000D"]["Value"][0] for s in answer.json()}


def test_no_or_bad_credentials_are_refused(world: World) -> None:
    bad = ("Bearer cfk_nonsense", "Basic dXNlcjpwYXNz", "Bearer")
    for headers in [{}, *({"Authorization": value} for value in bad)]:
        answer = world.client.get("/dicomweb/studies", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"].startswith("Bearer")
    revoked_info, revoked = world.accounts.create_api_key("hosp-a", "technologist")
    world.accounts.revoke_api_key(revoked_info.key_id)
    answer = world.client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {revoked}"})
    assert answer.status_code == 401
    assert revoked not in answer.text


def test_a_key_sees_its_institution_only(world: World) -> None:
    a = world.key("hosp-a", "radiologist")
    assert _studies(world, a) == {world.study_a}
    assert _studies(world, world.key("hosp-b", "referring")) == {world.study_b}
    assert _studies(world, world.key(None, "platform-admin")) == {world.study_a, world.study_b}
    # another institution's study answers like a missing one, at every level
    for path in ("/metadata", "", "/series", "/instances", "/rendered", "/thumbnail"):
        hidden = world.client.get(f"/dicomweb/studies/{world.study_b}{path}", headers=a)
        missing = world.client.get(f"/dicomweb/studies/1.2.3.4{path}", headers=a)
        assert hidden.status_code == missing.status_code, path
        assert hidden.status_code in (204, 404) or hidden.json() == [], path
    missing = world.client.get("/dicomweb/studies/1.2.3.4/metadata", headers=a)
    hidden = world.client.get(f"/dicomweb/studies/{world.study_b}/metadata", headers=a)
    assert (missing.status_code, missing.json()["detail"].replace("1.2.3.4", "X")) == (
        hidden.status_code, hidden.json()["detail"].replace(world.study_b, "X"),
    )  # fmt: skip
    own = world.client.get(f"/dicomweb/studies/{world.study_a}/metadata", headers=a)
    assert own.status_code == 200


def test_roles_decide_store_and_download(world: World) -> None:
    tech = world.key("hosp-a", "technologist")
    referring = world.key("hosp-a", "referring")
    body = part10(make_dataset(PatientID="PN"))
    boundary = "cloudfilmtest"
    payload = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body
        + f"\r\n--{boundary}--\r\n".encode()
    )  # fmt: skip
    content = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    refused = world.client.post(
        "/dicomweb/studies", content=payload, headers={**referring, **content}
    )
    assert refused.status_code == 403
    stored = world.client.post("/dicomweb/studies", content=payload, headers={**tech, **content})
    assert stored.status_code == 200, stored.text
    assert len(_studies(world, tech)) == 2  # the new study belongs to hospital A
    assert len(_studies(world, world.key("hosp-b", "technologist"))) == 1


def test_a_signed_in_user_sees_its_institution(world: World) -> None:
    world.accounts.create_user("li", "a long enough password", "radiologist", "hosp-b")
    user = world.accounts.sign_in("li", "a long enough password", "127.0.0.1").user
    assert user is not None
    cookie = world.accounts.session_cookie(user, utcnow() + timedelta(hours=1))
    world.client.cookies.set(STAFF_COOKIE, cookie)
    try:
        assert _studies(world, {}) == {world.study_b}
        world.client.cookies.set(STAFF_COOKIE, cookie + "0")  # tampered: no principal at all
        assert world.client.get("/dicomweb/studies").status_code == 401
    finally:
        world.client.cookies.clear()


def test_dicomweb_client_with_a_bearer_key(world: World) -> None:
    """The ``dicomweb-client`` package, as a PACS or script would use it, over real HTTP."""
    import threading
    import time

    import uvicorn

    app = world.client.app
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        _, key = world.accounts.create_api_key("hosp-a", "radiologist")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        client = DICOMwebClient(f"http://127.0.0.1:{port}/dicomweb", session=session)
        found = client.search_for_studies()
        assert [s["0020000D"]["Value"][0] for s in found] == [world.study_a]
        instance = client.retrieve_instance(world.study_a, world.series_a, world.sop_a)
        assert instance.SOPInstanceUID == world.sop_a
        anonymous = DICOMwebClient(f"http://127.0.0.1:{port}/dicomweb")
        with pytest.raises(requests.HTTPError) as refused:
            anonymous.search_for_studies()
        assert refused.value.response.status_code == 401
    finally:
        server.should_exit = True
        thread.join(20)


def test_every_door_is_audited(world: World, archive: Archive) -> None:
    from sqlalchemy import select

    from cloudfilm.audit import trail_for
    from cloudfilm.index.models import AuditEvent

    _, key = world.accounts.create_api_key("hosp-a", "radiologist")
    bearer = {"Authorization": f"Bearer {key}", "User-Agent": "PACS-7"}
    assert world.client.get("/dicomweb/studies", headers=bearer).status_code == 200
    meta = world.client.get(f"/dicomweb/studies/{world.study_a}/metadata", headers=bearer)
    assert meta.status_code == 200
    hidden = world.client.get(f"/dicomweb/studies/{world.study_b}/metadata", headers=bearer)
    assert hidden.status_code == 404
    assert (
        world.client.get("/dicomweb/studies", headers={"Authorization": "Bearer x"}).status_code
        == 401
    )
    assert world.client.get("/health").status_code == 200
    assert trail_for(archive).flush(timeout=30)
    with archive.sessions() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        seen = [(r.action, r.outcome, r.actor_kind, r.institution, r.study_uid) for r in rows]
        assert all(key not in (r.detail + r.actor_id) for r in rows)
        agents = {r.agent for r in rows}
    key_id = key.split("_")[1]
    assert seen == [
        ("query", "success", "apikey", "hosp-a", ""),
        ("view", "success", "apikey", "hosp-a", world.study_a),
        ("view", "denied", "apikey", "hosp-a", world.study_b),
        ("query", "denied", "anonymous", "", ""),
    ]
    assert "PACS-7" in agents and key_id
