"""OAuth 2.0 client credentials: an API key traded for a short-lived bearer token.

The same production application as ``test_access_doors`` (a study of hospital A and one of
B). The real client is ``requests-oauthlib`` (oauthlib's ``BackendApplicationClient``) over
real HTTP, then ``dicomweb-client`` with the token it got.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import jwt
import pytest
import requests
import uvicorn
from dicomweb_client.api import DICOMwebClient
from doors_support import World
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session
from sqlalchemy import select

from cloudfilm.access.accounts import utcnow
from cloudfilm.access.oauth import OAuthTokens
from cloudfilm.archive import Archive
from cloudfilm.audit import trail_for
from cloudfilm.index.models import AuditEvent

pytestmark = pytest.mark.db


def _token(world: World, key_id: str, secret: str, **form: str) -> requests.Response:
    basic = base64.b64encode(f"{key_id}:{secret}".encode()).decode()
    return world.client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", **form},
        headers={"Authorization": f"Basic {basic}"},
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _studies(world: World, token: str) -> set[str]:
    answer = world.client.get("/dicomweb/studies", headers=_bearer(token))
    assert answer.status_code == 200, answer.text
    return {s["0020000D"]["Value"][0] for s in answer.json()}


def test_a_token_stands_for_its_key(world: World) -> None:
    info, key = world.accounts.create_api_key("hosp-a", "technologist")
    answer = _token(world, info.key_id, key)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == "download store shares"
    assert _studies(world, body["access_token"]) == {world.study_a}
    # the secret may also come in the form (client_secret_post)
    posted = world.client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": info.key_id, "client_secret": key},
    )
    assert posted.status_code == 200, posted.text
    # revoking the key ends its tokens at once
    world.accounts.revoke_api_key(info.key_id)
    refused = world.client.get("/dicomweb/studies", headers=_bearer(body["access_token"]))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")


def test_scope_narrows_the_role(world: World) -> None:
    info, key = world.accounts.create_api_key("hosp-a", "technologist")
    zip_path = f"/api/studies/{world.study_a}/download.zip"
    store_only = _token(world, info.key_id, key, scope="store").json()
    assert store_only["scope"] == "store"
    assert (
        world.client.get(zip_path, headers=_bearer(store_only["access_token"])).status_code == 403
    )
    download = _token(world, info.key_id, key, scope="download").json()["access_token"]
    assert world.client.get(zip_path, headers=_bearer(download)).status_code == 200
    # more than the role allows, or a scope that does not exist
    referring, referring_key = world.accounts.create_api_key("hosp-a", "referring")
    beyond = _token(world, referring.key_id, referring_key, scope="download store")
    assert (beyond.status_code, beyond.json()["error"]) == (400, "invalid_scope")
    unknown = _token(world, info.key_id, key, scope="root")
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_scope")


@pytest.mark.parametrize(
    ("form", "headers", "status", "error"),
    [
        ({"grant_type": "password"}, "basic", 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "", 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, "wrong-secret", 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, "other-id", 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, "not-base64", 401, "invalid_client"),
        ({"grant_type": "client_credentials", "client_secret": "x"}, "basic", 400,
         "invalid_request"),
        ({"grant_type": "client_credentials", "scope": "x" * 600}, "basic", 400,
         "invalid_request"),
        ({"scope": "store"}, "basic", 400, "invalid_request"),
        ({}, "basic", 415, None),
    ],
)  # fmt: skip
def test_bad_token_requests(
    world: World, form: dict[str, str], headers: str, status: int, error: str | None
) -> None:
    info, key = world.accounts.create_api_key("hosp-a", "technologist")
    credentials = {
        "basic": f"{info.key_id}:{key}",
        "wrong-secret": f"{info.key_id}:{key[:-4]}AAAA",
        "other-id": f"000000000000:{key}",
    }
    sent = {}
    if headers == "not-base64":
        sent = {"Authorization": "Basic ***"}
    elif headers:
        encoded = base64.b64encode(credentials[headers].encode()).decode()
        sent = {"Authorization": f"Basic {encoded}"}
    answer = world.client.post("/oauth/token", data=form, headers=sent)
    assert answer.status_code == status, answer.text
    if error is not None:
        assert answer.json()["error"] == error
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Basic")
    assert key not in answer.text


def test_expired_forged_and_altered_tokens_are_refused(world: World, archive: Archive) -> None:
    info, key = world.accounts.create_api_key("hosp-a", "admin")
    settings = world.client.app.state.settings  # type: ignore[attr-defined]
    tokens = OAuthTokens(archive, settings)
    old = tokens.issue(info.key_id, key, None, utcnow() - timedelta(hours=2)).access_token
    good = tokens.issue(info.key_id, key, None).access_token
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode(claims, "another secret of thirty-two bytes!", algorithm="HS256")
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    widened = jwt.encode({**claims, "scope": "users"}, "x" * 32, algorithm="HS256")
    head, _, sig = good.split(".")
    swapped = ".".join((head, jwt.encode({**claims, "client_id": "x"}, "k").split(".")[1], sig))
    assert _studies(world, good) == {world.study_a}
    for bad in (old, forged, unsigned, widened, swapped, good[:-3] + "AAA"):
        answer = world.client.get("/dicomweb/studies", headers=_bearer(bad))
        assert answer.status_code == 401, bad


def test_token_requests_are_audited_without_secrets(world: World, archive: Archive) -> None:
    info, key = world.accounts.create_api_key("hosp-a", "technologist")
    assert _token(world, info.key_id, key).status_code == 200
    wrong = key[:-1] + ("B" if key.endswith("A") else "A")  # one character off, never the key
    assert _token(world, info.key_id, wrong).status_code == 401
    trail_for(archive).flush()
    with archive.sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == "oauth-token")).all()
        seen = [(r.outcome, r.actor_id) for r in rows]
        text = " ".join(f"{r.detail} {r.actor_id} {r.agent}" for r in rows)
    assert ("success", info.key_id) in seen and ("denied", info.key_id) in seen
    assert key not in text and key[4:] not in text


@pytest.fixture
def live(world: World) -> Iterator[int]:
    config = uvicorn.Config(
        world.client.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(20)


def test_oauthlib_client_then_dicomweb_client(
    world: World, live: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A standard OAuth 2.0 client library fetches the token; a DICOMweb client uses it."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback only
    info, key = world.accounts.create_api_key("hosp-a", "radiologist")
    base = f"http://127.0.0.1:{live}"
    session = OAuth2Session(client=BackendApplicationClient(client_id=info.key_id))
    token = session.fetch_token(
        f"{base}/oauth/token", client_id=info.key_id, client_secret=key, include_client_id=True
    )
    assert token["token_type"] == "Bearer" and token["scope"] == ["download", "shares"]
    client = DICOMwebClient(f"{base}/dicomweb", session=session)
    found = client.search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in found] == [world.study_a]
    instance = client.retrieve_instance(world.study_a, world.series_a, world.sop_a)
    assert instance.SOPInstanceUID == world.sop_a
