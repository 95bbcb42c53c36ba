"""The upload endpoint's audio_duration_seconds is the decoded length (issue 15, item 1).

Through the real API and PostgreSQL (the fixtures of tests/conftest.py).
"""

from __future__ import annotations

import httpx
import pytest

from tests.analyzer.conftest import FIXTURES
from tests.conftest import ApiUser


@pytest.mark.parametrize(
    ("name", "ctype", "seconds"),
    [
        ("cases/adts_8s_silence_24s_speech.aac", "audio/aac", 32.0),
        ("cases/vbr_mp3_no_xing_4s_silence_24s_speech.mp3", "audio/mpeg", 28.0),
        ("speech_normal.m4a", "audio/mp4", 6.9),
    ],
)
async def test_upload_reports_the_decoded_duration(
    client: httpx.AsyncClient, alice: ApiUser, name: str, ctype: str, seconds: float
) -> None:
    session = await client.post(
        "/api/v1/practice/sessions", json={"title": "durations"}, headers=alice.headers
    )
    assert session.status_code == 201, session.text
    session_id = session.json()["practice_session_id"]
    response = await client.post(
        f"/api/v1/practice/sessions/{session_id}/records",
        files={"audio": (name.split("/")[-1], (FIXTURES / name).read_bytes(), ctype)},
        headers=alice.headers,
    )
    assert response.status_code == 201, response.text
    assert response.json()["audio_duration_seconds"] == pytest.approx(seconds, abs=0.1)
