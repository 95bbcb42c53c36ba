"""The seed's design, as the seed describes it (shared/seed: "VocalBorn Celery + Redis 任務佇列
系統整合規劃"): a Celery 5 app with a Redis broker (database 0 there, ours: 2) and a Redis result
backend (1 there, ours: 3), one queue `ai_analysis`, a prefork worker with concurrency 4,
prefetch multiplier 1 and at most 1,000 tasks per child, started as the seed's compose file
starts it (`celery -A ... worker --loglevel=info --queues=ai_analysis --concurrency=4`).

`analyze_audio_task` is the seed's task: processing (task row, then record), the recording
sent to the AI service with a synchronous HTTP client (the body streamed from storage, the
NDJSON answer read line by line), each progress line both as Celery state (`update_state`) and
as a row update, then the result row, `success`, the record `ai_analyzed`, and the result
returned to the backend; on an error, failure and the record back to `recorded`, retried up to
3 times after 60 s. Database writes are synchronous (psycopg 3, autocommit, one connection per
pool process, each write its own transaction as the seed's `update_task_status` commits): the
same tables and rows as ours, in its own database (BENCH_DATABASE_URL; bench/stack.py
`CELERY_DATABASE`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from celery import Celery, Task

QUEUE = "ai_analysis"
CHUNK_SIZE = 256 * 1024
NDJSON = "application/x-ndjson"

app = Celery("vocalborn_tasks")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/2"),
    result_backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/3"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    worker_concurrency=4,
    worker_prefetch_multiplier=1,
    worker_max_tasks_per_child=1000,
    broker_connection_retry_on_startup=True,
)

# The HTTP library's own line per request is not the seed's logging (it names no client).
logging.getLogger("httpx").setLevel(logging.WARNING)

_database: psycopg.Connection[Any] | None = None
_http: httpx.Client | None = None


def database() -> psycopg.Connection[Any]:
    """This pool process's connection (made after the fork)."""
    global _database
    if _database is None or _database.closed:
        _database = psycopg.connect(os.environ["BENCH_DATABASE_URL"], autocommit=True)
    return _database


def http() -> httpx.Client:
    global _http
    if _http is None:
        _http = httpx.Client(
            base_url=os.environ["AI_SERVICE_URL"],
            headers={"Accept": NDJSON},
            timeout=httpx.Timeout(240.0, connect=5.0),
        )
    return _http


def update_task_status(task_id: str, status: str, **fields: Any) -> None:
    """The seed's utils.task_updater.update_task_status: one row update, committed."""
    assignments = ["status = %(status)s", "updated_at = now()"]
    if status == "processing" and fields.pop("starting", False):
        assignments += ["started_at = now()", "attempt = attempt + 1", "worker_name = %(worker)s"]
    if status in ("success", "failure"):
        assignments.append("completed_at = now()")
    for name in ("progress", "current_step", "error_message"):
        if name in fields:
            assignments.append(f"{name} = %({name})s")
    sql = f"UPDATE ai_analysis_tasks SET {', '.join(assignments)} WHERE task_id = %(task_id)s"
    database().execute(sql, {"task_id": task_id, "status": status} | fields)


def set_record_status(record_id: str, status: str) -> None:
    database().execute(
        "UPDATE practice_records SET record_status = %s, updated_at = now()"
        " WHERE practice_record_id = %s",
        (status, record_id),
    )


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            yield chunk


def analyze_practice_record(
    record_id: str,
    params: dict[str, Any],
    request_id: str,
    progress_callback: Callable[[str, int], None],
) -> dict[str, Any]:
    """The seed's AIAnalysisService.analyze_practice_record: the record's recording to the AI
    service, its progress to the callback, its result back."""
    row = (
        database()
        .execute(
            "SELECT audio_storage_key, audio_content_type FROM practice_records"
            " WHERE practice_record_id = %s",
            (record_id,),
        )
        .fetchone()
    )
    if row is None:
        raise ValueError(f"practice record {record_id} not found")
    key, content_type = row
    path = Path(os.environ["STORAGE_DIR"]) / key
    query = {k: str(v) for k, v in params.items() if v is not None}
    with http().stream(
        "POST",
        "/v1/analyze",
        content=_chunks(path),
        params=query,
        headers={"Content-Type": content_type, "X-Request-ID": request_id},
    ) as response:
        response.raise_for_status()
        for raw in response.iter_lines():
            if not raw.strip():
                continue
            line = json.loads(raw)
            if line["event"] == "progress":
                progress_callback(str(line.get("step")), int(line["progress"]))
            elif line["event"] == "result":
                result: dict[str, Any] = line["result"]
                return result
            else:
                raise RuntimeError(f"AI service error: {line}")
    raise RuntimeError("AI service stream ended without a result")


def save_analysis_result(task_id: str, result: dict[str, Any]) -> None:
    database().execute(
        """
        INSERT INTO ai_analysis_results (task_id, overall_score, pronunciation_accuracy,
            fluency_score, rhythm_score, detailed_analysis, sentence_analyses, suggestions,
            improvement_areas, analysis_model_version, processing_time_seconds)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            task_id,
            result.get("overall_score"),
            result.get("pronunciation_accuracy"),
            result.get("fluency_score"),
            result.get("rhythm_score"),
            json.dumps(result.get("detailed_analysis") or {}),
            json.dumps(result.get("sentence_analyses")),
            result.get("suggestions"),
            json.dumps(result.get("improvement_areas")),
            result.get("analysis_model_version"),
            result.get("processing_time_seconds"),
        ),
    )


@app.task(bind=True, name="analyze_audio_task", max_retries=3)  # type: ignore[untyped-decorator]
def analyze_audio_task(
    self: Task[Any, Any], practice_record_id: str, analysis_params: dict[str, Any]
) -> dict[str, Any]:
    task_id = str(self.request.id)
    try:
        update_task_status(task_id, "processing", starting=True, worker=self.request.hostname)
        set_record_status(practice_record_id, "ai_processing")

        def progress_callback(step: str, progress: int) -> None:
            self.update_state(state="PROGRESS", meta={"current_step": step, "progress": progress})
            update_task_status(task_id, "processing", progress=progress, current_step=step)

        result = analyze_practice_record(
            practice_record_id, analysis_params or {}, task_id, progress_callback
        )
        save_analysis_result(task_id, result)
        update_task_status(task_id, "success", progress=100, current_step="completed")
        set_record_status(practice_record_id, "ai_analyzed")
        return result
    except Exception as exc:
        update_task_status(task_id, "failure", error_message=str(exc)[:1000])
        set_record_status(practice_record_id, "recorded")
        if self.request.retries < (self.max_retries or 0):
            update_task_status(task_id, "retry")
            raise self.retry(exc=exc, countdown=60) from exc
        raise
