"""ai_analysis_tasks.lane: the priority lane a task waits in (issue 14, item 3): interactive
(one recording submitted by a waiting user) or batch (session submits, admin retries,
re-analyses). Existing rows are interactive.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "ai_analysis_tasks",
        sa.Column("lane", sa.String(16), server_default="interactive", nullable=False),
    )
    op.execute(
        "ALTER TABLE ai_analysis_tasks ADD CONSTRAINT ck_ai_analysis_tasks_lane"
        " CHECK (lane IN ('interactive', 'batch'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE ai_analysis_tasks DROP CONSTRAINT ck_ai_analysis_tasks_lane")
    op.drop_column("ai_analysis_tasks", "lane")
