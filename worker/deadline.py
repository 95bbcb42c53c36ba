"""How long one AI call may take: its deadline, counted from the moment the call has its
provider and slot (time spent waiting for a slot never counts against it).

One function, so that the deadline's rule (today a setting; later one that grows with the
recording) lives in one place.
"""

from __future__ import annotations

from app.analysis.lifecycle import Claim
from app.settings import Settings


def ai_deadline(settings: Settings, claimed: Claim) -> float:
    """Seconds the AI call of attempt `claimed` may take, from when it starts: AI_DEADLINE_
    SECONDS. Must stay below JOB_TIMEOUT_SECONDS (checked in worker/main.py)."""
    return settings.ai_deadline_seconds
