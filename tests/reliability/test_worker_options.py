"""The worker refuses settings under which arq's timeout would cut an AI call short; arq's
timeout of a job adds the longest wait for an AI slot, which never counts against the call."""

from __future__ import annotations

import pytest

from app.settings import Settings
from worker.main import worker_options


def test_our_deadline_must_fire_before_arqs_timeout(settings: Settings) -> None:
    fine = settings.model_copy(
        update={"ai_deadline_seconds": 10, "job_timeout_seconds": 20, "ai_slot_wait_seconds": 0}
    )
    assert worker_options(fine)["job_timeout"] == 20
    waits = fine.model_copy(update={"ai_slot_wait_seconds": 300})
    assert worker_options(waits)["job_timeout"] == 320
    (function,) = worker_options(waits)["functions"]
    assert function.timeout_s == 320
    late = settings.model_copy(update={"ai_deadline_seconds": 20, "job_timeout_seconds": 20})
    with pytest.raises(ValueError, match="AI_DEADLINE_SECONDS must be below JOB_TIMEOUT_SECONDS"):
        worker_options(late)
