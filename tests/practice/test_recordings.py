from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from tests.audio import make_mp3, make_wav
from tests.conftest import ApiUser

BOUNDARY = "vocalbornboundary"


async def _session(client: httpx.AsyncClient, user: ApiUser) -> str:
    response = await client.post(
        "/api/v1/practice/sessions", json={"title": "t"}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    session_id: str = response.json()["practice_session_id"]
    return session_id


async def _upload(
    client: httpx.AsyncClient, user: ApiUser, session_id: str, name: str, data: bytes, ctype: str
) -> httpx.Response:
    return await client.post(
        f"/api/v1/practice/sessions/{session_id}/records",
        files={"audio": (name, data, ctype)},
        headers=user.headers,
    )


def _stored_files(settings: Settings) -> list[Path]:
    return [p for p in Path(settings.storage_dir).rglob("*") if p.is_file()]


async def _record_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("SELECT count(*) FROM practice_records")) or 0)


async def test_wav_upload(client: httpx.AsyncClient, alice: ApiUser, settings: Settings) -> None:
    session_id = await _session(client, alice)
    wav = make_wav(seconds=1.5)
    response = await _upload(client, alice, session_id, "../../etc/passwd.wav", wav, "audio/wav")
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["audio_content_type"] == "audio/wav"
    assert record["audio_size_bytes"] == len(wav)
    assert record["audio_duration_seconds"] == pytest.approx(1.5, abs=0.01)
    assert record["record_status"] == "recorded"
    [stored] = _stored_files(settings)
    assert stored.read_bytes() == wav
    assert "passwd" not in str(stored) and stored.is_relative_to(settings.storage_dir)

    fetched = await client.get(
        f"/api/v1/practice/records/{record['practice_record_id']}", headers=alice.headers
    )
    assert fetched.json() == record
    session = await client.get(f"/api/v1/practice/sessions/{session_id}", headers=alice.headers)
    assert [r["practice_record_id"] for r in session.json()["records"]] == [
        record["practice_record_id"]
    ]


async def test_mp3_upload_is_typed_by_content(client: httpx.AsyncClient, alice: ApiUser) -> None:
    session_id = await _session(client, alice)
    mp3 = make_mp3(seconds=1.0)
    response = await _upload(client, alice, session_id, "recording.wav", mp3, "audio/wav")
    assert response.status_code == 201, response.text
    assert response.json()["audio_content_type"] == "audio/mpeg"
    assert response.json()["audio_size_bytes"] == len(mp3)


async def test_text_file_named_wav_is_415(
    client: httpx.AsyncClient, alice: ApiUser, settings: Settings, engine: AsyncEngine
) -> None:
    session_id = await _session(client, alice)
    response = await _upload(
        client,
        alice,
        session_id,
        "speech.wav",
        b"hello, this is not audio at all\n" * 10,
        "audio/wav",
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert _stored_files(settings) == [] and await _record_count(engine) == 0


async def test_empty_file_is_422(client: httpx.AsyncClient, alice: ApiUser) -> None:
    session_id = await _session(client, alice)
    response = await _upload(client, alice, session_id, "a.wav", b"", "audio/wav")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "empty_audio"


async def test_missing_file_field_is_422(client: httpx.AsyncClient, alice: ApiUser) -> None:
    session_id = await _session(client, alice)
    response = await client.post(
        f"/api/v1/practice/sessions/{session_id}/records",
        data={"note": "no file"},
        files={"other": ("a.wav", make_wav(0.1), "audio/wav")},
        headers=alice.headers,
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "missing_audio"


def _oversize_body(settings: Settings) -> tuple[bytes, bytes]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="audio"; filename="big.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    wav_header = make_wav(seconds=0.01)
    payload = wav_header + b"\0" * (settings.max_audio_file_size + 1 - len(wav_header))
    return head + payload, tail


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
async def test_oversize_upload_is_413_and_leaves_nothing(
    client: httpx.AsyncClient,
    alice: ApiUser,
    settings: Settings,
    engine: AsyncEngine,
    with_length: bool,
) -> None:
    session_id = await _session(client, alice)
    body, tail = _oversize_body(settings)
    assert len(body) - body.index(b"RIFF") == settings.max_audio_file_size + 1
    headers = {**alice.headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    url = f"/api/v1/practice/sessions/{session_id}/records"
    if with_length:
        response = await client.post(url, content=body + tail, headers=headers)
    else:

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 1 << 20):
                yield body[start : start + (1 << 20)]
            yield tail

        response = await client.post(url, content=chunks(), headers=headers)
        assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    assert _stored_files(settings) == []
    assert await _record_count(engine) == 0


async def test_exactly_the_limit_is_accepted(
    client: httpx.AsyncClient, alice: ApiUser, settings: Settings
) -> None:
    small = settings.model_copy(update={"max_audio_file_size": 4096})
    client._transport.app.state.vocalborn.settings = small  # type: ignore[attr-defined]
    session_id = await _session(client, alice)
    wav = make_wav(seconds=0.01)
    data = wav + b"\0" * (4096 - len(wav))
    ok = await _upload(client, alice, session_id, "a.wav", data, "audio/wav")
    assert ok.status_code == 201, ok.text
    over = await _upload(client, alice, session_id, "a.wav", data + b"\0", "audio/wav")
    assert over.status_code == 413


async def test_other_users_session_and_record_are_404(
    client: httpx.AsyncClient, alice: ApiUser, bob: ApiUser
) -> None:
    session_id = await _session(client, alice)
    record = (await _upload(client, alice, session_id, "a.wav", make_wav(0.2), "audio/wav")).json()
    unknown = str(uuid.uuid4())
    for path in (f"/practice/sessions/{session_id}", f"/practice/sessions/{unknown}"):
        response = await client.get(f"/api/v1{path}", headers=bob.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    for record_id in (record["practice_record_id"], unknown):
        response = await client.get(f"/api/v1/practice/records/{record_id}", headers=bob.headers)
        assert response.status_code == 404
    upload = await _upload(client, bob, session_id, "a.wav", make_wav(0.2), "audio/wav")
    assert upload.status_code == 404


async def test_malformed_multipart_is_400_and_leaves_nothing(
    client: httpx.AsyncClient, alice: ApiUser, settings: Settings, engine: AsyncEngine
) -> None:
    session_id = await _session(client, alice)
    response = await client.post(
        f"/api/v1/practice/sessions/{session_id}/records",
        content=b"this is not a multipart body at all" * 100,
        headers=alice.headers | {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_multipart"
    assert _stored_files(settings) == [] and await _record_count(engine) == 0


@pytest.mark.parametrize(
    "escape", [r"\u0000", r"\ud800", r"\udc00x\ud800"], ids=["NUL", "lone high", "reversed pair"]
)
async def test_text_postgres_refuses_is_a_validation_error(
    client: httpx.AsyncClient, alice: ApiUser, escape: str
) -> None:
    """A NUL character or an unpaired surrogate (valid JSON escapes; PostgreSQL refuses both
    in text and jsonb, and the surrogate has no UTF-8 form) is a 422, not a 500."""
    record = uuid.uuid4()
    bodies = {
        "/api/v1/practice/sessions": f'{{"title": "a{escape}b"}}',
        "/api/v1/tasks/analysis/submit": (
            f'{{"practice_record_id": "{record}", "parameters": {{"target_text": "a{escape}"}}}}'
        ),
    }
    for path, body in bodies.items():
        response = await client.post(
            path, content=body, headers=alice.headers | {"Content-Type": "application/json"}
        )
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["code"] == "validation_error"
