"""The AI client keeps as many calls in flight as the worker runs jobs (httpx's default pool
capped them at 100 whatever WORKER_MAX_JOBS said; JOBS is more than that), and keeps its
connections alive between calls for AI_KEEPALIVE_SECONDS, no longer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from app.ai_client.client import NDJSON, AIClient
from app.ai_client.wire import ProgressLine
from app.settings import Settings
from tests.ai_server import serving
from tests.analysis.conftest import wait_for
from tests.fake_ai import HANG, FakeAI

JOBS = 120


async def _audio() -> AsyncIterator[bytes]:
    yield b"RIFF" + bytes(64)


async def _ignore(line: ProgressLine) -> None:
    return None


async def test_as_many_ai_calls_in_flight_as_the_worker_runs_jobs(
    fake_ai: FakeAI, worker_settings: Settings
) -> None:
    fake_ai.reset(default=HANG)
    settings = worker_settings.model_copy(
        update={"worker_max_jobs": JOBS, "ai_deadline_seconds": 30.0}
    )
    client = AIClient(settings)
    calls = [
        asyncio.create_task(client.analyze(_audio(), "audio/wav", {}, f"t{n}:1", _ignore))
        for n in range(JOBS)
    ]
    try:

        async def all_in_flight() -> bool:
            return fake_ai.call_count() == JOBS

        await wait_for(all_in_flight, within=15)
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await client.aclose()


async def test_a_call_read_to_its_end_leaves_its_connection_to_the_next(
    fake_ai: FakeAI, worker_settings: Settings
) -> None:
    """The result line is not the answer's end (its chunked terminator follows): a response
    closed there made httpcore close its connection, and every call open a new one."""
    fake_ai.reset()
    client = AIClient(worker_settings)
    try:
        for n in range(3):
            result = await client.analyze(_audio(), "audio/wav", {}, f"t{n}:1", _ignore)
            assert result.overall_score is not None
    finally:
        await client.aclose()
    assert len({call.peer for call in fake_ai.calls}) == 1


async def test_an_answer_that_ends_after_its_result_line_leaves_its_connection_to_the_next(
    settings: Settings,
) -> None:
    """The same, for a service whose answer ends a moment after its result line (its chunked
    terminator in a later packet): aiohttp parses an end that has already come whether it is
    read or not, so only such an answer shows a response closed at the result line (its
    connection then closed, a new one opened for every call)."""
    result = b'{"event": "result", "result": {"overall_score": 1.0, "detailed_analysis": {}}}\n'
    peers: list[object] = []
    async with serving(200, [result], {"Content-Type": NDJSON}, end_after=0.2, peers=peers) as url:
        client = AIClient(settings.model_copy(update={"ai_service_url": url}))
        try:
            for n in range(2):
                answer = await client.analyze(_audio(), "audio/wav", {}, f"t{n}:1", _ignore)
                assert answer.overall_score == 1.0
        finally:
            await client.aclose()
    assert len(peers) == 2 and peers[0] == peers[1], peers


async def test_an_idle_connection_is_not_reused_past_the_keepalive(
    fake_ai: FakeAI, worker_settings: Settings
) -> None:
    """A connection idle longer than AI_KEEPALIVE_SECONDS is replaced, not reused: httpx's
    default (5 s) equalled uvicorn's idle timeout, and a call sent on a connection the service
    was closing met a ReadError (R8, under load: a retry spent)."""
    fake_ai.reset()
    keepalive = 0.3
    client = AIClient(worker_settings.model_copy(update={"ai_keepalive_seconds": keepalive}))
    try:
        await client.analyze(_audio(), "audio/wav", {}, "t1:1", _ignore)
        await client.analyze(_audio(), "audio/wav", {}, "t2:1", _ignore)  # reused at once
        await asyncio.sleep(2 * keepalive)  # the idle time under test, not a synchronisation
        await client.analyze(_audio(), "audio/wav", {}, "t3:1", _ignore)
    finally:
        await client.aclose()
    first, second, third = (call.peer for call in fake_ai.calls)
    assert first == second and third != second
