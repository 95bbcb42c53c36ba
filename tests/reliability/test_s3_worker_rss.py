"""A 50 MiB recording analysed from S3: the worker process streams the object to the AI
service without holding it, so its peak RSS grows by at most 32 MB (issue 12).

The recording is uploaded through the API to a real SeaweedFS; a real worker process
(`python -m worker`, STORAGE_BACKEND=s3) sends it to the fake AI service, which
hashes what it receives. The figure: the worker's peak RSS (VmHWM) after the analysis minus its
RSS (VmRSS) once warmed up by a small analysis, printed as `FIGURE S3 RSS: ...`."""

from __future__ import annotations

import hashlib
import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from tests.analysis.conftest import submit, upload_recording, wait_for_status
from tests.conftest import ApiUser, s3_settings
from tests.fake_ai import FakeAI
from tests.reliability.worker_process import WorkerProcess, worker_env
from tests.seaweed import EmbeddedSeaweed

MB = 1_000_000
RSS_GROWTH_LIMIT = 32 * MB
LONG = {"ai_deadline_seconds": 120.0, "job_timeout_seconds": 150.0}


def _wav_of(size: int, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV of `size` bytes or just under (a 220 Hz tone)."""
    frames = (size - 44) // 2
    period = np.round(12_000 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate))
    samples = np.resize(period.astype("<i2"), frames)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def _status_kib(pid: int, field: str) -> int:
    """A `VmRSS:`/`VmHWM:` line of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture
def rss_settings(worker_settings: Settings, seaweed: EmbeddedSeaweed) -> Settings:
    return s3_settings(worker_settings, seaweed).model_copy(update=LONG)


@pytest.fixture
async def s3_app(rss_settings: Settings, clean: None) -> AsyncIterator[FastAPI]:
    application = create_app(rss_settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_a_50_mib_recording_from_s3_grows_the_worker_by_at_most_32_mb(
    s3_app: FastAPI,
    rss_settings: Settings,
    alice: ApiUser,
    fake_ai: FakeAI,
    tmp_path: Path,
) -> None:
    recording = _wav_of(rss_settings.max_audio_file_size)
    assert rss_settings.max_audio_file_size - len(recording) < 2  # 50 MiB
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=s3_app), base_url="http://test", timeout=120
    ) as client:
        session_id, warm_up, _ = await upload_recording(client, alice)
        response = await client.post(
            f"/api/v1/practice/sessions/{session_id}/records",
            files={"audio": ("big.wav", recording, "audio/wav")},
            headers=alice.headers,
        )
        assert response.status_code == 201, response.text
        assert response.json()["audio_size_bytes"] == len(recording)
        big = str(response.json()["practice_record_id"])

        env = worker_env(
            rss_settings,
            WORKER_NAME="rss-worker",
            STORAGE_BACKEND="s3",
            S3_BUCKET=str(rss_settings.s3_bucket),
            S3_ENDPOINT_URL=str(rss_settings.s3_endpoint_url),
            S3_ACCESS_KEY_ID=str(rss_settings.s3_access_key_id),
            S3_SECRET_ACCESS_KEY=str(rss_settings.s3_secret_access_key),
            S3_KEY_PREFIX=str(rss_settings.s3_key_prefix),
            **{key.upper(): str(value) for key, value in LONG.items()},
        )
        worker = await WorkerProcess.start(env, tmp_path)
        try:
            # Warm up: the code paths (obstore, httpx, the AI client) loaded and used once.
            first = (await submit(client, alice, warm_up))["task_id"]
            status = await wait_for_status(client, alice, first, within=60)
            assert status["status"] == "success", (status, worker.output())
            before = _status_kib(worker.pid, "VmRSS")

            task_id = (await submit(client, alice, big))["task_id"]
            status = await wait_for_status(client, alice, task_id, within=120)
            assert status["status"] == "success", (status, worker.output())
            peak = _status_kib(worker.pid, "VmHWM")
        finally:
            await worker.kill()

    [call] = [c for c in fake_ai.calls if c.headers["x-request-id"].startswith(task_id)]
    assert call.body_bytes == len(recording)
    assert call.body_sha256 == hashlib.sha256(recording).hexdigest()
    growth = peak - before
    print(
        f"FIGURE S3 RSS: worker streaming a {len(recording) / 2**20:.1f} MiB recording from "
        f"S3 to the AI: RSS {before / MB:.1f} MB before, peak {peak / MB:.1f} MB, "
        f"growth {growth / MB:.1f} MB (limit {RSS_GROWTH_LIMIT / MB:.0f} MB)"
    )
    assert growth <= RSS_GROWTH_LIMIT
