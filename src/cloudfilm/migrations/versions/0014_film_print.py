"""film: pass-through printing on real film, and the department of a peer

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 04:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dimse_peer") as batch:
        batch.add_column(
            sa.Column("department", sa.String(length=200), nullable=False, server_default="")
        )
    op.create_table(
        "film_print",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("printer", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("printed_film_pk", sa.Integer(), nullable=True),
        sa.Column("institution", sa.String(length=64), nullable=False),
        sa.Column("film_size", sa.String(length=16), nullable=False),
        sa.Column("copies", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=400), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_film_print_due", "film_print", ["state", "next_attempt_at"])
    op.create_index("ix_film_print_study_uid", "film_print", ["study_uid"])


def downgrade() -> None:
    op.drop_index("ix_film_print_study_uid", table_name="film_print")
    op.drop_index("ix_film_print_due", table_name="film_print")
    op.drop_table("film_print")
    with op.batch_alter_table("dimse_peer") as batch:
        batch.drop_column("department")
