"""ai_analysis_tasks.claim_token: which claim moved the row, so that a claim whose answer was
lost is recognised by the job that made it and by nothing else (not by another run of the same
job id, nor by a worker restarted under the same name).

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ai_analysis_tasks", sa.Column("claim_token", UUID(as_uuid=True)))


def downgrade() -> None:
    op.drop_column("ai_analysis_tasks", "claim_token")
