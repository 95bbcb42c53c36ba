from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.users.models import User


async def list_users(session: AsyncSession, limit: int, offset: int) -> Sequence[User]:
    rows = await session.scalars(
        select(User).order_by(User.created_at, User.user_id).limit(limit).offset(offset)
    )
    return rows.all()
