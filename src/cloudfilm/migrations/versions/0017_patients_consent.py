"""patients across institutions (PIX), consent, recognition records, notifier outbox

Revision ID: 0017
Revises: 0015
Create Date: 2026-11-29 04:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "platform_patient",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("strong_key_hmac", sa.String(length=64), nullable=True),
        sa.Column("phone_sealed", sa.String(length=200), nullable=True),
        sa.Column("phone_hint", sa.String(length=8), nullable=False),
        sa.Column("merged_into_pk", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("strong_key_hmac"),
    )
    op.create_table(
        "patient_link",
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.Column("platform_patient_pk", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patient_pk"], ["patient.pk"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["platform_patient_pk"], ["platform_patient.pk"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("patient_pk"),
    )
    op.create_index("ix_patient_link_platform_patient_pk", "patient_link", ["platform_patient_pk"])
    op.create_table(
        "consent",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("platform_patient_pk", sa.Integer(), nullable=False),
        sa.Column("grantee_institution_pk", sa.Integer(), nullable=False),
        sa.Column("grantee_username", sa.String(length=64), nullable=True),
        sa.Column("all_exams", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_via", sa.String(length=200), nullable=False),
        sa.Column("code_hmac", sa.String(length=64), nullable=True),
        sa.Column("code_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("code_failures", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["grantee_institution_pk"], ["institution.pk"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["platform_patient_pk"], ["platform_patient.pk"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_consent_grantee", "consent", ["grantee_institution_pk", "state"])
    op.create_index("ix_consent_platform_patient_pk", "consent", ["platform_patient_pk"])
    op.create_table(
        "consent_study",
        sa.Column("consent_pk", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["consent_pk"], ["consent.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("consent_pk", "study_uid"),
    )
    op.create_index("ix_consent_study_study_uid", "consent_study", ["study_uid"])
    op.create_table(
        "recognition",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("institution_pk", sa.Integer(), nullable=False),
        sa.Column("origin_institution_pk", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(length=200), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=400), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["institution_pk"], ["institution.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_recognition_institution", "recognition", ["institution_pk", "created_at"])
    op.create_index("ix_recognition_study_uid", "recognition", ["study_uid"])
    op.create_table(
        "outbox_message",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("to", sa.String(length=64), nullable=False),
        sa.Column("text", sa.String(length=1000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )


def downgrade() -> None:
    op.drop_table("outbox_message")
    op.drop_index("ix_recognition_study_uid", table_name="recognition")
    op.drop_index("ix_recognition_institution", table_name="recognition")
    op.drop_table("recognition")
    op.drop_index("ix_consent_study_study_uid", table_name="consent_study")
    op.drop_table("consent_study")
    op.drop_index("ix_consent_platform_patient_pk", table_name="consent")
    op.drop_index("ix_consent_grantee", table_name="consent")
    op.drop_table("consent")
    op.drop_index("ix_patient_link_platform_patient_pk", table_name="patient_link")
    op.drop_table("patient_link")
    op.drop_table("platform_patient")
