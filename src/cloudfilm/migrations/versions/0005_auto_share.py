"""sharing: automatic cloud films for stable studies (one claim row per study)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auto_share",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("share_id", sa.String(length=16), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        # The columns of ``DurableJob`` (cloudfilm.index.models), as in 0004.
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
        sa.UniqueConstraint("study_uid"),
    )
    op.create_index("ix_auto_share_due", "auto_share", ["state", "next_attempt_at"], unique=False)
    op.create_index(op.f("ix_study_updated_at"), "study", ["updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_study_updated_at"), table_name="study")
    op.drop_index("ix_auto_share_due", table_name="auto_share")
    op.drop_table("auto_share")
