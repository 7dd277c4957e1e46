"""sharing: cloud film links, their studies, lockout counters and access log

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "share",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("token_sealed", sa.String(length=200), nullable=False),
        sa.Column("parent_id", sa.String(length=16), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("permissions", sa.String(length=64), nullable=False),
        sa.Column("secret_kind", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=200), nullable=True),
        sa.Column("code_sealed", sa.String(length=200), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("note", sa.String(length=1000), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["parent_id"], ["share.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    with op.batch_alter_table("share", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_share_accession_number"), ["accession_number"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_share_parent_id"), ["parent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_share_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "share_lockout",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("scope", "subject"),
    )
    op.create_table(
        "share_access",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("share_id", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=400), nullable=False),
        sa.ForeignKeyConstraint(["share_id"], ["share.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    with op.batch_alter_table("share_access", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_share_access_share_id"), ["share_id"], unique=False)

    op.create_table(
        "share_study",
        sa.Column("share_id", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["share_id"], ["share.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("share_id", "study_uid"),
    )
    with op.batch_alter_table("share_study", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_share_study_study_uid"), ["study_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("share_study", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_share_study_study_uid"))
    op.drop_table("share_study")
    with op.batch_alter_table("share_access", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_share_access_share_id"))
    op.drop_table("share_access")
    op.drop_table("share_lockout")
    with op.batch_alter_table("share", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_share_patient_id"))
        batch_op.drop_index(batch_op.f("ix_share_parent_id"))
        batch_op.drop_index(batch_op.f("ix_share_accession_number"))
    op.drop_table("share")
