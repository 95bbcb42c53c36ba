"""Issue 11's abuse suite: fixtures shared by the S scenarios, and `figure`, the one place a
scenario reports the number it measured for tests/reliability/REPORT.md."""

from __future__ import annotations

import pytest

from app.users.models import Role
from tests.analysis.conftest import fake_ai, fake_ai_server, start_worker, worker_settings
from tests.conftest import ApiUser, MakeUser
from tests.events.conftest import live_settings, start_live_api
from tests.reliability.report import current_test, record_figure

__all__ = [
    "fake_ai",
    "fake_ai_server",
    "live_settings",
    "start_live_api",
    "start_worker",
    "worker_settings",
]


def figure(sid: str, text: str) -> None:
    """One scenario's figure for tests/reliability/REPORT.md (`record_figure`: printed, and
    appended to the figures file), one row per test: the part is the running test's id."""
    record_figure(sid, text, part=current_test())


@pytest.fixture
async def admin(make_user: MakeUser) -> ApiUser:
    return await make_user("admin@example.test", Role.ADMIN)
