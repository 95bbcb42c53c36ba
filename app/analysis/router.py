from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError

from app.analysis import service, submit
from app.analysis.schemas import (
    AnalysisResultOut,
    SessionStatusOut,
    SessionSubmitted,
    SubmitRequest,
    SubmittedTask,
    TaskStatusOut,
)
from app.deps import (
    SessionDep,
    StateDep,
    UserDep,
    caller_of,
    json_body,
    state_of,
    submitting_user,
    text_header,
)
from app.errors import error_responses
from app.openapi_models import json_body_doc

router = APIRouter(
    prefix="/tasks/analysis", tags=["analysis"], responses=error_responses(401, 404, 422)
)

# The OpenAPI security of a route that finds its caller itself (`caller_of`), as FastAPI
# documents those that depend on HTTPBearer.
BEARER: list[dict[str, list[str]]] = [{"HTTPBearer": []}]

IDEMPOTENCY_KEY = "Idempotency-Key"
IDEMPOTENCY_KEY_LENGTH = {"min_length": 1, "max_length": 200}

# The submit reads its request itself; its OpenAPI operation, as FastAPI documented the body
# and header parameters it had (the body's models: BODY_MODELS, added by app.main).
SUBMIT_DOC: dict[str, Any] = {
    "security": BEARER,
    "parameters": [
        {
            "name": IDEMPOTENCY_KEY,
            "in": "header",
            "required": False,
            "schema": {
                "anyOf": [
                    {
                        "type": "string",
                        "minLength": IDEMPOTENCY_KEY_LENGTH["min_length"],
                        "maxLength": IDEMPOTENCY_KEY_LENGTH["max_length"],
                    },
                    {"type": "null"},
                ],
                "title": IDEMPOTENCY_KEY,
            },
        }
    ],
    "requestBody": json_body_doc(SubmitRequest),
}
# The models of the bodies this router's routes read themselves (for the OpenAPI components).
BODY_MODELS = (SubmitRequest,)


@router.get("/{task_id}/status", response_model=TaskStatusOut, openapi_extra={"security": BEARER})
async def task_status(task_id: uuid.UUID, request: Request) -> Response:
    """The status of one of your analysis tasks."""
    # The hottest read: its caller and state taken from the request in one call (`caller_of`),
    # not through FastAPI's dependency tree, and the document serialised once by its own
    # model and returned as is (`response_model` documents it), not validated and serialised
    # again by FastAPI.
    state = state_of(request)
    user = caller_of(request, state.settings)
    document = await service.read_status(state.pg, state.arq, state.estimator, user, task_id)
    return Response(document.model_dump_json(), media_type="application/json")


@router.post(
    "/submit",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SubmittedTask | SessionSubmitted,
    responses=error_responses(400, 429),  # 400: a body that is not JSON
    openapi_extra=SUBMIT_DOC,
)
async def submit_analysis(request: Request) -> Response:
    """Submit one recording (`practice_record_id`) or every recording of a practice session
    (`practice_session_id`) for analysis."""
    # The hottest write reads its request itself, not through FastAPI's dependency tree (a
    # quarter of its CPU, bench/PROFILES.md), with FastAPI's answers in FastAPI's order: a
    # body that is not JSON (422/400), the caller (401), the rate limit (429), then the
    # Idempotency-Key and the body's fields together (422). The answer is serialised once by
    # its own model (`response_model` documents it), as the status read's.
    state = state_of(request)
    body = await json_body(request, SubmitRequest)
    user = await submitting_user(request, state)
    idempotency_key, errors = text_header(request, IDEMPOTENCY_KEY, **IDEMPOTENCY_KEY_LENGTH)
    if isinstance(body, list):
        errors += body
    if errors:
        raise RequestValidationError(errors)
    assert isinstance(body, SubmitRequest)
    if body.practice_record_id is not None:
        task = await submit.submit_record(
            state.pg,
            state.submitter,
            user,
            body.practice_record_id,
            body.parameters,
            idempotency_key,
            fresh=body.fresh,
        )
        return _accepted(task)
    assert body.practice_session_id is not None
    async with state.sessions() as session:
        tasks = await submit.submit_session(
            session,
            state.submitter,
            user,
            body.practice_session_id,
            body.parameters,
            idempotency_key,
            fresh=body.fresh,
        )
    return _accepted(SessionSubmitted(practice_session_id=body.practice_session_id, tasks=tasks))


def _accepted(answer: SubmittedTask | SessionSubmitted) -> Response:
    return Response(
        answer.model_dump_json(),
        status_code=status.HTTP_202_ACCEPTED,
        media_type="application/json",
    )


@router.get("/session/{session_id}/status", response_model=SessionStatusOut)
async def session_status(
    session_id: uuid.UUID, user: UserDep, session: SessionDep, state: StateDep
) -> SessionStatusOut:
    return await service.get_session_status(session, state.arq, state.estimator, user, session_id)


@router.get("/{task_id}/result", response_model=AnalysisResultOut)
async def task_result(task_id: uuid.UUID, user: UserDep, session: SessionDep) -> AnalysisResultOut:
    return await service.get_result(session, user, task_id)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TaskStatusOut,
    responses=error_responses(409),
)
async def cancel_task(
    task_id: uuid.UUID, user: UserDep, session: SessionDep, state: StateDep
) -> TaskStatusOut:
    return await service.cancel(session, state.arq, state.estimator, state.publisher, user, task_id)
