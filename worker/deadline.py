"""How long one attempt's AI call may take: the deadline follows the recording's length, and is
counted from the moment the call has its provider and slot (time spent waiting for a slot
never counts against it: worker/attempt.py)."""

from __future__ import annotations

import math

from app.settings import Settings


def ai_deadline(settings: Settings, audio_seconds: float | None) -> float:
    """The AI call's deadline in seconds for a recording of `audio_seconds` seconds (as
    measured at upload; None when unknown): AI_DEADLINE_BASE_SECONDS plus
    AI_DEADLINE_PER_AUDIO_SECOND per second of audio, at most AI_DEADLINE_SECONDS. An
    unknown (or nonsensical) duration gets AI_DEADLINE_SECONDS. The cap is below
    JOB_TIMEOUT_SECONDS (worker.main.worker_options refuses it otherwise), so the deadline
    always ends before arq's timeout of the job."""
    cap = settings.ai_deadline_seconds
    if audio_seconds is None or not math.isfinite(audio_seconds) or audio_seconds < 0:
        return cap
    per_second = settings.ai_deadline_per_audio_second
    grown = settings.ai_deadline_base_seconds + per_second * audio_seconds
    return min(grown, cap)
