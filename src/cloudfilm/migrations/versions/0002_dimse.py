"""dimse: known DICOM peers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dimse_peer",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("allowed_from", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(length=400), nullable=False),
        sa.Column("institution", sa.String(length=200), nullable=False),
        sa.Column("can_store", sa.Boolean(), nullable=False),
        sa.Column("can_query", sa.Boolean(), nullable=False),
        sa.Column("can_retrieve", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("ae_title"),
    )


def downgrade() -> None:
    op.drop_table("dimse_peer")
