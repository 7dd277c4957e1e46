"""The world of the door tests: a production application holding a study of hospital A and
one of hospital B (``world``, a fixture registered in ``conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from cloudfilm.access.accounts import Accounts
from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive
from support.instances import make_dataset, part10


@dataclass
class World:
    client: TestClient
    accounts: Accounts
    study_a: str
    series_a: str
    sop_a: str
    study_b: str

    def key(self, institution: str | None, role: str) -> dict[str, str]:
        _, key = self.accounts.create_api_key(institution, role)
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def world(archive: Archive) -> Iterator[World]:
    accounts = Accounts(archive)
    a = accounts.add_institution("hosp-a", "医院甲").pk
    b = accounts.add_institution("hosp-b").pk
    ds_a = make_dataset(
        PatientID="PA", PatientName="Zhang^San=张^三", SpecificCharacterSet="ISO_IR 192"
    )
    ds_b = make_dataset(PatientID="PB")
    assert archive.store(part10(ds_a), institution=a).ok
    assert archive.store(part10(ds_b), institution=b).ok
    settings = archive.settings.model_copy(update={"env": "production", "secret_key": "k" * 40})
    app = create_app(settings, archive)
    with TestClient(app) as client:
        yield World(
            client, Accounts(archive, settings), ds_a.StudyInstanceUID, ds_a.SeriesInstanceUID,
            ds_a.SOPInstanceUID, ds_b.StudyInstanceUID,
        )  # fmt: skip
