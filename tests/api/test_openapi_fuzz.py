"""schemathesis against our own OpenAPI spec: no generated request gets a 500.

Every operation of ``/openapi.json`` is called with requests that schemathesis makes from the
spec (hypothesis underneath), on a production application holding a study, as a platform
admin's API key (so that the requests reach the handlers instead of stopping at 401) and as an
anonymous caller. Whatever the parameters, the answer is a client error or a success, never a
server error. The examples per operation are few, to keep the run short; the cases found are
replayed from hypothesis' database on the next run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from cloudfilm.access.accounts import Accounts
from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from support.instances import make_dataset, part10

_EXAMPLES = 25


def _application(folder: Path) -> tuple[Archive, object, str]:
    settings = Settings(  # SQLite in the folder, whatever CLOUDFILM_DATABASE_URL says
        data_dir=folder, database_url=None, min_free_bytes=0, storage="file"
    ).model_copy(update={"env": "production", "secret_key": "s" * 40})
    archive = Archive.open(settings)
    accounts = Accounts(archive, settings)
    accounts.add_institution("hosp-a")
    institution = accounts.add_institution("hosp-b").pk
    ds = make_dataset(PatientID="P-FUZZ", PatientName="张^三", SpecificCharacterSet="ISO_IR 192")
    assert archive.store(part10(ds), institution=institution).ok
    _, key = accounts.create_api_key(None, "platform-admin")
    return archive, create_app(settings, archive), key


@pytest.fixture(scope="module")
def application(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str]]:
    archive, app, key = _application(tmp_path_factory.mktemp("fuzz") / "data")
    try:
        yield app, key
    finally:
        archive.close()


@pytest.fixture(scope="module")
def api_schema(application: tuple[object, str]) -> object:
    return schemathesis.openapi.from_asgi("/openapi.json", application[0])


@pytest.fixture(scope="module")
def key(application: tuple[object, str]) -> str:
    return application[1]


schema = schemathesis.pytest.from_fixture("api_schema")


def _no_server_error(case: schemathesis.Case, headers: dict[str, str]) -> None:
    response = case.call(headers=headers)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}\n"
        f"{case.as_curl_command(headers=headers)}\n{response.text[:2000]}"
    )


@schema.parametrize()
@settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_as_platform_admin(case: schemathesis.Case, key: str) -> None:
    _no_server_error(case, {"Authorization": f"Bearer {key}"})


@schema.parametrize()
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_as_anonymous(case: schemathesis.Case) -> None:
    _no_server_error(case, {})


def test_the_spec_lists_the_doors(application: tuple[object, str]) -> None:
    """The fuzzing above covers what the spec lists; the access matrix covers the rest."""
    with TestClient(application[0]) as client:  # type: ignore[arg-type]
        spec = client.get("/openapi.json").json()
    assert len(spec["paths"]) > 30
