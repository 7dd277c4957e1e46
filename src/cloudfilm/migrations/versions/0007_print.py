"""print: the print permission of peers and the unmatched printed films

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dimse_peer") as batch:
        batch.add_column(
            sa.Column("can_print", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(
        "ix_instance_source_received", "instance", ["source", "received_at"], unique=False
    )
    op.create_table(
        "printed_film",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("institution", sa.String(length=64), nullable=False),
        sa.Column("film_session_label", sa.String(length=64), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("blob_key", sa.String(length=200), nullable=False),
        sa.Column("display_format", sa.String(length=64), nullable=False),
        sa.Column("film_size", sa.String(length=16), nullable=False),
        sa.Column("orientation", sa.String(length=16), nullable=False),
        sa.Column("dpi", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("annotated", sa.Boolean(), nullable=False),
        sa.Column("attached_study_uid", sa.String(length=64), nullable=True),
        sa.Column("attached_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("attached_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("blob_key"),
    )
    op.create_index(
        op.f("ix_printed_film_calling_ae"), "printed_film", ["calling_ae"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_printed_film_calling_ae"), table_name="printed_film")
    op.drop_table("printed_film")
    op.drop_index("ix_instance_source_received", table_name="instance")
    with op.batch_alter_table("dimse_peer") as batch:
        batch.drop_column("can_print")
