"""Practice sessions and recordings: the part of the platform the queue needs to run alone."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from app.audio_types import AudioType, decoded_duration
from app.auth import Principal, Unauthorized
from app.errors import NotFound
from app.practice.models import PracticeRecord, PracticeSession
from app.practice.upload import receive_audio
from app.settings import Settings
from app.storage import Storage


async def create_session(
    session: AsyncSession, user: Principal, title: str | None
) -> PracticeSession:
    practice = PracticeSession(user_id=user.user_id, title=title)
    session.add(practice)
    try:
        await session.commit()
    except IntegrityError as exc:  # the token's subject is not a known user
        raise Unauthorized("Unknown user") from exc
    return practice  # server defaults came back with the INSERT (RETURNING)


async def get_owned_session(
    session: AsyncSession, user: Principal, session_id: uuid.UUID
) -> PracticeSession:
    practice = await session.scalar(
        select(PracticeSession).where(
            PracticeSession.practice_session_id == session_id,
            PracticeSession.user_id == user.user_id,
        )
    )
    if practice is None:
        raise NotFound("Practice session")
    return practice


async def list_sessions(
    session: AsyncSession, user: Principal, limit: int
) -> list[PracticeSession]:
    """The user's sessions, newest first."""
    rows = await session.scalars(
        select(PracticeSession)
        .where(PracticeSession.user_id == user.user_id)
        .order_by(PracticeSession.created_at.desc(), PracticeSession.practice_session_id)
        .limit(limit)
    )
    return list(rows)


async def list_records(session: AsyncSession, session_id: uuid.UUID) -> list[PracticeRecord]:
    rows = await session.scalars(
        select(PracticeRecord)
        .where(PracticeRecord.practice_session_id == session_id)
        .order_by(PracticeRecord.created_at, PracticeRecord.practice_record_id)
    )
    return list(rows)


async def get_owned_record(
    session: AsyncSession, user: Principal, record_id: uuid.UUID
) -> PracticeRecord:
    record = await session.scalar(
        select(PracticeRecord)
        .join(PracticeSession)
        .where(
            PracticeRecord.practice_record_id == record_id,
            PracticeSession.user_id == user.user_id,
        )
    )
    if record is None:
        raise NotFound("Practice record")
    return record


async def upload_record(
    session: AsyncSession,
    storage: Storage,
    settings: Settings,
    user: Principal,
    session_id: uuid.UUID,
    request: Request,
) -> PracticeRecord:
    await get_owned_session(session, user, session_id)
    await session.commit()  # no connection held open while a slow client uploads
    stem = storage.new_stem(user.user_id)
    async with receive_audio(
        request, storage, stem, settings.max_audio_file_size, settings.supported_audio_formats
    ) as stored:
        record = PracticeRecord(
            practice_session_id=session_id,
            audio_storage_key=stored.key,
            audio_content_type=stored.audio_type.content_type,
            audio_size_bytes=stored.size,
            audio_sha256=stored.sha256,
            audio_duration_seconds=await _duration(storage, stored.key, stored.audio_type),
        )
        session.add(record)
        await session.commit()
    return record  # server defaults came back with the INSERT (RETURNING)


async def _duration(storage: Storage, key: str, audio_type: AudioType) -> float | None:
    """Seconds of audio from the decoded sample count (app.audio_types.decoded_duration),
    read back from storage (ranged reads on S3, never a whole copy)."""

    def measure() -> float | None:
        with storage.open_blocking(key) as reader:
            return decoded_duration(reader, audio_type)

    return await asyncio.to_thread(measure)
