"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cloudfilm.core.config import Settings
from cloudfilm.core.db import create_index_engine
from cloudfilm.index import migrate
from cloudfilm.index.models import Base

pytestmark = pytest.mark.db


def test_migrations_match_the_models(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    engine = create_index_engine(settings.resolved_database_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def test_upgrade_is_idempotent_and_reports_head(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    engine = create_index_engine(settings.resolved_database_url)
    assert migrate.current_revision(engine) is None
    migrate.ensure_schema(engine)
    migrate.ensure_schema(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
