"""ai_analysis_results: which AI provider and model produced the result, and whether it is a
degraded one (a fallback provider, e.g. the reference analyzer: acoustic measures only) and
why (issue 14).

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ai_analysis_results", sa.Column("provider", sa.String(32)))
    op.add_column("ai_analysis_results", sa.Column("provider_model", sa.String(50)))
    op.add_column(
        "ai_analysis_results",
        sa.Column("degraded", sa.Boolean, server_default=sa.false(), nullable=False),
    )
    op.add_column("ai_analysis_results", sa.Column("degraded_reason", sa.Text))


def downgrade() -> None:
    for column in ("degraded_reason", "degraded", "provider_model", "provider"):
        op.drop_column("ai_analysis_results", column)
