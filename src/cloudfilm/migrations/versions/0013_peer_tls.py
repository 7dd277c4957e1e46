"""dimse: peers reached and admitted over DICOM TLS only

Revision ID: 0013
Revises: 0008
Create Date: 2026-11-28 19:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dimse_peer") as batch:
        batch.add_column(sa.Column("tls", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("dimse_peer") as batch:
        batch.drop_column("tls")
