"""The progress relay (worker/relay.py) against real PostgreSQL, Redis, an in-process worker and
a real HTTP server as the AI service: progress lines that come with the result cost no write
and no publish (the outcome's follow at once). Progress that comes before the result is written
and published: tests/events/test_sse.py sees every step."""

from __future__ import annotations

import json

import httpx
from redis.asyncio import Redis

from app.ai_client.client import NDJSON
from app.analysis.progress import DOC_FIELD, stream_key, task_topic
from tests.ai_server import serving
from tests.analysis.conftest import StartWorker, new_task, wait_for_status
from tests.conftest import ApiUser
from tests.fake_ai import PROGRESS_LINES, RESULT_LINE


async def _published(redis: Redis, task_id: str) -> list[tuple[str, str]]:
    """(status, step) of each status document published for the task, in order."""
    entries = await redis.xrange(stream_key(task_topic(task_id)))
    documents = [json.loads(fields[DOC_FIELD]) for _, fields in entries]
    return [(doc["status"], doc["current_step"]["code"]) for doc in documents]


async def test_progress_that_comes_with_the_result_is_neither_written_nor_published(
    client: httpx.AsyncClient, alice: ApiUser, start_worker: StartWorker, redis: Redis
) -> None:
    # The answer's end comes after its lines (as from a server that sends its end on its own):
    # the worker reads on past the result line meanwhile.
    headers = {"Content-Type": NDJSON}
    async with serving(
        200, [b"".join(PROGRESS_LINES) + RESULT_LINE], headers, end_after=0.5
    ) as url:
        task_id = await new_task(client, alice)
        await start_worker(ai_service_url=url)
        final = await wait_for_status(client, alice, task_id)
    assert final["status"] == "success", final
    # pending (the submit), processing (the claim), success: no processing document of a
    # later step, which only the progress write publishes.
    assert await _published(redis, task_id) == [
        ("pending", "queued"),
        ("processing", "uploading"),
        ("success", "completed"),
    ]
