"""Shared fixtures: settings and an archive on a temporary folder, on SQLite or PostgreSQL.

Tests that use the index run on SQLite (in the temporary data folder) and, when
``CLOUDFILM_DATABASE_URL`` names a PostgreSQL database, once more on PostgreSQL: each such test
gets its own schema in that database, dropped afterwards (test ids end in ``[sqlite]`` or
``[postgresql]``). ``CLOUDFILM_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns a missing
service into a failure instead of a skip.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from support.seaweed import WEED_MISSING, SeaweedServer, find_weed, start_seaweedfs

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
REQUIRE_SERVICES = os.environ.get("CLOUDFILM_REQUIRE_SERVICES") == "1"


def service_missing(reason: str) -> None:
    """Skip for a missing service, or fail when the environment requires every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (CLOUDFILM_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def _postgres_url() -> str | None:
    url = os.environ.get("CLOUDFILM_DATABASE_URL", "")
    return url if url.startswith(("postgresql", "postgres")) else None


def _backends() -> list[str]:
    return ["sqlite", "postgresql"] if _postgres_url() else ["sqlite"]


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for SQLite in the data folder; else a PostgreSQL URL bound to a fresh schema."""
    base = _postgres_url()
    if request.param == "sqlite" or base is None:
        yield None
        return
    import sqlalchemy as sa

    from cloudfilm.core.db import normalize_url

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(base), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        service_missing(f"PostgreSQL at {base} is not reachable: {exc}")
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        min_free_bytes=0,
        storage="file",
    )


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    with Archive.open(settings) as opened:
        yield opened


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str]:
    """Environment for a ``cloudfilm`` subprocess that uses the same archive as ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDFILM_")}
    env["CLOUDFILM_DATA_DIR"] = str(settings.data_dir)
    env["CLOUDFILM_MIN_FREE_BYTES"] = "0"
    if settings.database_url:
        env["CLOUDFILM_DATABASE_URL"] = settings.database_url
    return env


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS S3 gateway on loopback for the whole session (``.endpoint``, keys)."""
    weed = find_weed()
    if weed is None:
        service_missing(WEED_MISSING)
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), weed=weed)
    print(f"\nSeaweedFS ready at {server.endpoint} in {server.startup_seconds:.1f} s")
    try:
        yield server
    finally:
        server.stop()
