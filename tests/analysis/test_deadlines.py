"""The AI call's deadline follows the recording (issue 14): a base plus an allowance per
second of audio, at most AI_DEADLINE_SECONDS (below arq's job timeout); an unknown duration
gets the cap. The function, then a real worker cutting two hung calls at their own deadlines."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import pytest

from app.settings import Settings
from tests.analysis.conftest import StartWorker, submit, task_status, upload_recording, wait_for
from tests.conftest import ApiUser
from tests.fake_ai import HANG, FakeAI
from worker.deadline import ai_deadline
from worker.main import worker_options

SHAPE = {
    "ai_deadline_base_seconds": 30.0,
    "ai_deadline_per_audio_second": 0.5,
    "ai_deadline_seconds": 200.0,
    "job_timeout_seconds": 250.0,
}


def test_the_deadline_grows_with_the_recording(settings: Settings) -> None:
    shaped = settings.model_copy(update=SHAPE)
    assert ai_deadline(shaped, 0.0) == 30.0
    assert ai_deadline(shaped, 10.0) == 35.0
    assert ai_deadline(shaped, 120.0) == 90.0
    assert ai_deadline(shaped, 10.0) < ai_deadline(shaped, 11.0) < ai_deadline(shaped, 300.0)


def test_the_deadline_is_capped_below_the_job_timeout(settings: Settings) -> None:
    shaped = settings.model_copy(update=SHAPE)
    assert ai_deadline(shaped, 340.0) == 200.0  # 30 + 170: exactly the cap
    for seconds in (341.0, 3_600.0, 1e12):
        assert ai_deadline(shaped, seconds) == 200.0 < shaped.job_timeout_seconds
    worker_options(shaped)  # the cap below the job timeout: accepted
    late = shaped.model_copy(update={"ai_deadline_seconds": 250.0})
    with pytest.raises(ValueError, match="AI_DEADLINE_SECONDS must be below"):
        worker_options(late)


@pytest.mark.parametrize("unknown", [None, math.nan, math.inf, -1.0])
def test_an_unknown_duration_gets_the_cap(settings: Settings, unknown: float | None) -> None:
    shaped = settings.model_copy(update=SHAPE)
    assert ai_deadline(shaped, unknown) == 200.0


def test_the_defaults_keep_the_longest_recording_at_the_old_deadline() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert ai_deadline(defaults, None) == defaults.ai_deadline_seconds == 240.0
    assert ai_deadline(defaults, 600.0) == 240.0  # the reference analyzer's longest
    assert ai_deadline(defaults, 10.0) == 63.0
    assert defaults.ai_deadline_seconds < defaults.job_timeout_seconds


async def test_a_worker_cuts_each_hung_call_at_its_own_deadline(
    client: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    """Two hung calls, for a 2 s and a 12 s recording: with a base of 0.5 s and 0.5 s per
    second of audio, cut after 1.5 s and 6.5 s, both long before the cap (15 s)."""
    fake_ai.reset(default=HANG)
    tasks = {}
    for seconds in (2.0, 12.0):
        _, record_id, _ = await upload_recording(client, alice, seconds=seconds)
        tasks[seconds] = str((await submit(client, alice, record_id))["task_id"])
    await start_worker(
        ai_deadline_base_seconds=0.5,
        ai_deadline_per_audio_second=0.5,
        ai_deadline_seconds=15.0,
        retry_base_timeout_seconds=30.0,  # the retry comes after the measurement
    )

    async def cut_after(task_id: str) -> float:
        async def retrying() -> dict[str, object] | None:
            current = await task_status(client, alice, task_id)
            return current if current["status"] != "processing" else None

        called = await wait_for(lambda: _call_of(fake_ai, task_id), within=10)
        final = await wait_for(retrying, within=20, interval=0.05)
        assert final["status"] == "retry" and final["error_code"] == "timeout", final
        return time.monotonic() - called

    short, long = await asyncio.gather(cut_after(tasks[2.0]), cut_after(tasks[12.0]))
    assert 1.4 <= short < 6.0, short  # 1.5 s, the deadline of a 2 s recording
    assert 6.4 <= long < 12.0, long  # 6.5 s: grown with the recording, not the 15 s cap


async def _call_of(fake_ai: FakeAI, task_id: str) -> float | None:
    """When the fake AI service received the first call for `task_id` (time.monotonic())."""
    for call in list(fake_ai.calls):
        if call.headers.get("x-request-id", "").startswith(f"{task_id}:"):
            return call.at
    return None
