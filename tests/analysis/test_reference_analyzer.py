"""The lifecycle against the reference analyzer (a real `uvicorn analyzer.main:app` process)
instead of the fake: the worker's client and the analyzer agree on the wire format."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.embedded import free_port
from tests.analysis.conftest import StartWorker, submit, wait_for, wait_for_status
from tests.conftest import ApiUser

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample.wav"


@pytest.fixture
async def analyzer_url() -> AsyncIterator[str]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "analyzer.main:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{url}/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    try:
        await wait_for(healthy, within=30)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_real_analysis_end_to_end(
    client: httpx.AsyncClient, alice: ApiUser, analyzer_url: str, start_worker: StartWorker
) -> None:
    session = await client.post("/api/v1/practice/sessions", json={}, headers=alice.headers)
    session_id = session.json()["practice_session_id"]
    upload = await client.post(
        f"/api/v1/practice/sessions/{session_id}/records",
        files={"audio": ("sample.wav", SAMPLE.read_bytes(), "audio/wav")},
        headers=alice.headers,
    )
    record_id = upload.json()["practice_record_id"]
    task_id = (await submit(client, alice, record_id))["task_id"]
    await start_worker(ai_service_url=analyzer_url)
    samples: list[dict[str, object]] = []
    final = await wait_for_status(client, alice, task_id, samples=samples)
    assert final["status"] == "success", final
    result = (
        await client.get(f"/api/v1/tasks/analysis/{task_id}/result", headers=alice.headers)
    ).json()
    assert result["analysis_model_version"] == "reference-praat-1.1"
    assert 0 <= result["fluency_score"] <= 100 and 0 <= result["rhythm_score"] <= 100
    assert result["pronunciation_accuracy"] is None
    assert result["detailed_analysis"]["pronunciation_accuracy"]["reason"]
    assert result["suggestions"]
