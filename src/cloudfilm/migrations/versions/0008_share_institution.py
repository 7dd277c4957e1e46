"""sharing: the institution that issued a cloud film (scopes its accession number)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("share") as batch:
        batch.add_column(sa.Column("institution_pk", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_share_institution_pk_institution",
            "institution",
            ["institution_pk"],
            ["pk"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("share") as batch:
        batch.drop_constraint("fk_share_institution_pk_institution", type_="foreignkey")
        batch.drop_column("institution_pk")
