"""Platform baseline: users, practice sessions and practice records.

The real platform already has these tables; an integrator stamps this revision instead of
running it.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")
NEW_UUID = sa.text("gen_random_uuid()")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("user_id", UUID(as_uuid=True), server_default=NEW_UUID, nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(16), server_default="user", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("role IN ('user', 'admin')", name="ck_users_role"),
        sa.PrimaryKeyConstraint("user_id", name="pk_users"),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_table(
        "practice_sessions",
        sa.Column("practice_session_id", UUID(as_uuid=True), server_default=NEW_UUID),
        sa.Column("user_id", UUID(as_uuid=True), nullable=False),
        sa.Column("title", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name="fk_practice_sessions_user_id_users",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("practice_session_id", name="pk_practice_sessions"),
    )
    op.create_index("ix_practice_sessions_user_id", "practice_sessions", ["user_id"])
    op.create_table(
        "practice_records",
        sa.Column("practice_record_id", UUID(as_uuid=True), server_default=NEW_UUID),
        sa.Column("practice_session_id", UUID(as_uuid=True), nullable=False),
        sa.Column("audio_storage_key", sa.String(512), nullable=False),
        sa.Column("audio_content_type", sa.String(100), nullable=False),
        sa.Column("audio_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("audio_duration_seconds", sa.Float(), nullable=True),
        sa.Column("record_status", sa.String(20), server_default="recorded", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint(
            "record_status IN ('recorded', 'ai_queued', 'ai_processing', 'ai_analyzed')",
            name="ck_practice_records_record_status",
        ),
        sa.CheckConstraint("audio_size_bytes >= 0", name="ck_practice_records_audio_size"),
        sa.ForeignKeyConstraint(
            ["practice_session_id"],
            ["practice_sessions.practice_session_id"],
            name="fk_practice_records_practice_session_id_practice_sessions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("practice_record_id", name="pk_practice_records"),
        sa.UniqueConstraint("audio_storage_key", name="uq_practice_records_audio_storage_key"),
    )
    op.create_index(
        "ix_practice_records_session_created",
        "practice_records",
        ["practice_session_id", "created_at"],
    )


def downgrade() -> None:
    op.drop_table("practice_records")
    op.drop_table("practice_sessions")
    op.drop_table("users")
