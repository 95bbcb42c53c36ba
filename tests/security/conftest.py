"""Issue 11's abuse suite: fixtures shared by the S scenarios, and `figure`, the one place a
scenario reports the number it measured for tests/reliability/REPORT.md."""

from __future__ import annotations

import pytest

from app.users.models import Role
from tests.analysis.conftest import fake_ai, fake_ai_server, start_worker, worker_settings
from tests.conftest import ApiUser, MakeUser
from tests.events.conftest import live_settings, start_live_api

__all__ = [
    "fake_ai",
    "fake_ai_server",
    "live_settings",
    "start_live_api",
    "start_worker",
    "worker_settings",
]


def figure(sid: str, text: str) -> None:
    """One scenario's figure, printed as `FIGURE S<n>: <text>` (read with `pytest -s`, or from
    the captured output of a failed run); the lead wires it to tests/reliability/report.py."""
    print(f"\nFIGURE {sid}: {text}", flush=True)  # own line, after pytest's progress dots


@pytest.fixture
async def admin(make_user: MakeUser) -> ApiUser:
    return await make_user("admin@example.test", Role.ADMIN)
