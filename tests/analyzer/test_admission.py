"""Admission matches the pool (issue 14): the analyzer admits as many analyses as it has pool
processes and answers 503 `busy` with Retry-After to the next one at once, before reading its
upload; analyses it queues (ANALYZER_QUEUE_SIZE) wait whole for a process, never
interleaved with those running. A real uvicorn on loopback, real pool processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx

from analyzer.settings import Settings
from tests.analyzer.conftest import NDJSON, fixture_bytes, live_server, make_settings
from tests.reliability.system import poll

WAV = {"content-type": "audio/wav"}
LARGE = 40 * 1024 * 1024  # what the refused request declares


async def _hold(
    client: httpx.AsyncClient, stack: AsyncExitStack, body: bytes
) -> AsyncIterator[str]:
    """Start an analysis and keep it running (its stream open): returns at its first line,
    with the rest of its lines (a reference to keep: the stream stays open while it lives)."""
    response = await stack.enter_async_context(
        client.stream("POST", "/v1/analyze", content=body, headers=WAV | NDJSON)
    )
    assert response.status_code == 200
    lines = response.aiter_lines()
    first = json.loads(await anext(lines))
    assert first["event"] == "progress"
    return lines


async def _health(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/healthz")).json()
    return body


async def _answer_before_the_body(url: str, head: bytes, declared: int) -> bytes:
    """Send a POST declaring a `declared`-byte body, then only `head` of it, and read the
    answer's status line and headers (raw HTTP on a socket: httpx reads an answer only once
    it has sent the whole body). Fails if none comes within 5 s."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST /v1/analyze HTTP/1.1\r\nHost: {host}\r\nContent-Type: audio/wav\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode()
            + head
        )
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
    finally:
        writer.close()


async def test_the_analysis_beyond_the_pool_is_refused_at_once_before_its_upload() -> None:
    default = Settings().queue_size  # no queue: admission is the pool
    settings = make_settings(workers=2, queue_size=default, min_seconds=6.0, retry_after_seconds=3)
    body = fixture_bytes("speech_fast.wav")
    with live_server(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async with AsyncExitStack() as running:
                held = [await _hold(client, running, body) for _ in range(2)]  # one a process
                health = await _health(client)
                assert health["admission"] == {
                    "admitted": 2,
                    "running": 2,
                    "capacity": 2,
                    "pool_processes": 2,
                }
                # The third: answered while 40 MiB of its body are still to come.
                answer = await _answer_before_the_body(url, body[:44], LARGE)
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                assert b"\r\nretry-after: 3\r\n" in answer.lower(), answer
                refused = await client.post("/v1/analyze", content=body, headers=WAV)
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "busy"
                assert refused.headers["retry-after"] == "3"
                counts = (await _health(client))["analyses"]
                assert counts["refused_busy"] == 2 and counts["started"] == 2
                assert len(held) == 2

            # Both held analyses closed early by the client: their admissions end once their
            # pool processes have finished the stage each was in; then they are free again.
            async def freed() -> bool:
                return bool((await _health(client))["admission"]["admitted"] == 0)

            await poll(freed, 30, "the given-up analyses' admissions")
            after = await client.post("/v1/analyze", content=body, headers=WAV)
            assert after.status_code == 200, after.text


async def test_queued_analyses_wait_whole_for_a_process_never_interleaved() -> None:
    """ANALYZER_QUEUE_SIZE=2 on one process: three analyses admitted at once run one after
    the other (before, all three shared the process stage by stage and ended together)."""
    settings = make_settings(workers=1, queue_size=2, min_seconds=1.0)
    body = fixture_bytes("speech_fast.wav")
    with live_server(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def analyse() -> tuple[float, float]:
                lines = []
                async with client.stream(
                    "POST", "/v1/analyze", content=body, headers=WAV | NDJSON
                ) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line.strip():
                            lines.append((time.monotonic(), json.loads(line)))
                assert lines[-1][1]["event"] == "result"
                return lines[0][0], lines[-1][0]

            spans = sorted(await asyncio.gather(analyse(), analyse(), analyse()))
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert start >= end - 0.05, spans  # the next one began when one ended
            health = await _health(client)
            assert health["analyses"]["peak_running"] == 1
            assert health["analyses"]["started"] == health["analyses"]["succeeded"] == 3
            assert health["admission"]["admitted"] == 0
