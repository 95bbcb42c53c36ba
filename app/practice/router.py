from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request, status

from app.deps import SessionDep, SettingsDep, StorageDep, UserDep
from app.errors import error_responses
from app.practice import service
from app.practice.schemas import RecordOut, SessionCreate, SessionOut, SessionWithRecords

router = APIRouter(prefix="/practice", tags=["practice"], responses=error_responses(401, 404, 422))

UPLOAD_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"audio": {"type": "string", "format": "binary"}},
                    "required": ["audio"],
                }
            }
        }
    }
}


@router.post(
    "/sessions",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionOut,
    responses=error_responses(400),  # a body that is not JSON
)
async def create_session(body: SessionCreate, user: UserDep, session: SessionDep) -> SessionOut:
    practice = await service.create_session(session, user, body.title)
    return SessionOut.model_validate(practice)


@router.get("/sessions", response_model=list[SessionOut])
async def list_sessions(
    user: UserDep, session: SessionDep, limit: int = Query(default=20, ge=1, le=100)
) -> list[SessionOut]:
    """The user's practice sessions, newest first (the web page's session picker)."""
    return [SessionOut.model_validate(p) for p in await service.list_sessions(session, user, limit)]


@router.get("/sessions/{session_id}", response_model=SessionWithRecords)
async def get_session(
    session_id: uuid.UUID, user: UserDep, session: SessionDep
) -> SessionWithRecords:
    practice = await service.get_owned_session(session, user, session_id)
    records = await service.list_records(session, session_id)
    return SessionWithRecords(
        **SessionOut.model_validate(practice).model_dump(),
        records=[RecordOut.model_validate(r) for r in records],
    )


@router.post(
    "/sessions/{session_id}/records",
    status_code=status.HTTP_201_CREATED,
    response_model=RecordOut,
    responses=error_responses(400, 413, 415),
    openapi_extra=UPLOAD_DOC,
)
async def upload_record(
    session_id: uuid.UUID,
    request: Request,
    user: UserDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> RecordOut:
    record = await service.upload_record(session, storage, settings, user, session_id, request)
    return RecordOut.model_validate(record)


@router.get("/records/{record_id}", response_model=RecordOut)
async def get_record(record_id: uuid.UUID, user: UserDep, session: SessionDep) -> RecordOut:
    return RecordOut.model_validate(await service.get_owned_record(session, user, record_id))
