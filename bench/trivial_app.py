"""The baseline of the API scenarios: trivial FastAPI endpoints shaped like ours, served with
the same uvicorn flags (`uvicorn bench.trivial_app:app`). They validate the request the way
ours does (a pydantic body, a UUID path parameter) and answer a small JSON document, with no
database, Redis or authentication."""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class SubmitIn(BaseModel):
    practice_record_id: uuid.UUID


@app.post("/submit", status_code=202)
async def submit(body: SubmitIn) -> dict[str, str]:
    return {"task_id": str(body.practice_record_id), "status": "pending"}


@app.get("/status/{task_id}")
async def status(task_id: uuid.UUID) -> dict[str, str]:
    return {"task_id": str(task_id), "status": "pending"}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
