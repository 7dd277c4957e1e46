"""film: the Film Size ID of each stored film sheet, for the figures of film saved

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29 06:00:00.000000

Sheets stored before this revision get their size back from their Derivation Description
(0008,2111), which ``cloudfilm.film.sheets`` writes as ``cloudfilm film sheet <format> on
<Film Size ID> <orientation>, <dpi> dpi``; a sheet whose description says nothing keeps NULL
(the figures price it at ``film_price_default``).
"""

from __future__ import annotations

import json
import re

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_SIZE = re.compile(r"^cloudfilm film sheet \S+ on ([0-9A-Z_]{1,16}) ")
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def upgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.add_column(sa.Column("film_size", sa.String(length=16), nullable=True))
    instance = sa.table(
        "instance",
        sa.column("pk", sa.Integer),
        sa.column("sop_class_uid", sa.String),
        sa.column("source", sa.String),
        sa.column("header_json", sa.Text),
        sa.column("film_size", sa.String),
    )
    conn = op.get_bind()
    sheets = conn.execute(
        sa.select(instance.c.pk, instance.c.header_json).where(
            instance.c.sop_class_uid == _SECONDARY_CAPTURE,
            sa.or_(instance.c.source == "film", instance.c.source.like("print:%")),
        )
    ).all()
    for pk, header in sheets:
        size = _film_size(header)
        if size is not None:
            conn.execute(sa.update(instance).where(instance.c.pk == pk).values(film_size=size))


def _film_size(header: str) -> str | None:
    try:
        values = json.loads(header).get("00082111", {}).get("Value") or [""]
    except (ValueError, AttributeError):
        return None
    found = _SIZE.match(str(values[0]))
    return found.group(1) if found else None


def downgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.drop_column("film_size")
