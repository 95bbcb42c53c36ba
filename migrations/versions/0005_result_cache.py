"""The result cache by content (issue 14, item 5): practice_records.audio_sha256 (computed
while the recording uploads; NULL for earlier records, which are never a hit) with a partial
index for the lookup, and on ai_analysis_results what produced a result (`cache_model`) and,
for a copy, the task whose analysis it copies (`reused_from_task_id`, no foreign key).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("practice_records", sa.Column("audio_sha256", sa.String(64), nullable=True))
    op.create_index(
        "ix_practice_records_audio_sha256",
        "practice_records",
        ["audio_sha256"],
        postgresql_where=sa.text("audio_sha256 IS NOT NULL"),
    )
    op.add_column("ai_analysis_results", sa.Column("cache_model", sa.Text(), nullable=True))
    op.add_column(
        "ai_analysis_results",
        sa.Column("reused_from_task_id", UUID(as_uuid=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("ai_analysis_results", "reused_from_task_id")
    op.drop_column("ai_analysis_results", "cache_model")
    op.drop_index("ix_practice_records_audio_sha256", table_name="practice_records")
    op.drop_column("practice_records", "audio_sha256")
