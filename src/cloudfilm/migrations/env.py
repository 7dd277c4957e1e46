"""Alembic environment: the connection is handed in by ``cloudfilm.index.migrate``."""

from __future__ import annotations

from alembic import context

from cloudfilm.index.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when alembic is run by hand
    from cloudfilm.core.config import load_settings
    from cloudfilm.core.db import create_index_engine

    engine = create_index_engine(load_settings().resolved_database_url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
