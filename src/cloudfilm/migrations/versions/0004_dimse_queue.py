"""dimse: storage commitment transactions and the forwarding queue

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _job_columns() -> list[sa.Column[object]]:
    """The columns of ``DurableJob`` (cloudfilm.index.models), shared by both tables."""
    return [
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=400), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "dimse_commitment",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("references", sa.JSON(), nullable=False),
        sa.Column("event_type", sa.Integer(), nullable=True),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        *_job_columns(),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint(
            "calling_ae", "transaction_uid", name="uq_dimse_commitment_transaction"
        ),
    )
    op.create_index(
        "ix_dimse_commitment_due", "dimse_commitment", ["state", "next_attempt_at"], unique=False
    )
    op.create_table(
        "dimse_forward",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("rule", sa.String(length=200), nullable=False),
        *_job_columns(),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index(
        "ix_dimse_forward_due", "dimse_forward", ["state", "next_attempt_at"], unique=False
    )
    op.create_index(
        "ix_dimse_forward_destination", "dimse_forward", ["destination", "state"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_dimse_forward_destination", table_name="dimse_forward")
    op.drop_index("ix_dimse_forward_due", table_name="dimse_forward")
    op.drop_table("dimse_forward")
    op.drop_index("ix_dimse_commitment_due", table_name="dimse_commitment")
    op.drop_table("dimse_commitment")
