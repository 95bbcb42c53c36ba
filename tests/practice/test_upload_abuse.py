"""Abuse scenario S5 (issue 11), uploads, on both storage backends: each hostile body gets its
4xx in the one error shape (or, for a hostile file name, a server-generated key), and leaves
no file, no object, no unfinished multipart upload and no database row.

Records one figure per scenario and backend for tests/reliability/REPORT.md (`-s` shows them)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.main import create_app
from tests.audio import make_wav
from tests.conftest import ApiUser
from tests.practice.conftest import Backend
from tests.reliability.report import current_test, record_figure
from tests.servers import UvicornThread

pytestmark = pytest.mark.scenario("S5")

BOUNDARY = "s5boundary"
MiB = 1024 * 1024
WAV = make_wav(seconds=0.5)


def _part(disposition: str, content: bytes, content_type: str | None = "audio/wav") -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + content + b"\r\n"


def _body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _headers(user: ApiUser) -> dict[str, str]:
    return {**user.headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def _session(client: httpx.AsyncClient, user: ApiUser) -> str:
    response = await client.post("/api/v1/practice/sessions", json={}, headers=user.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["practice_session_id"])


async def _rows(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("SELECT count(*) FROM practice_records")) or 0)


async def _refused(
    client: httpx.AsyncClient,
    alice: ApiUser,
    backend: Backend,
    engine: AsyncEngine,
    scenario: str,
    content: bytes | AsyncIterator[bytes],
    status: int,
    code: str,
) -> None:
    session_id = await _session(client, alice)
    response = await client.post(
        f"/api/v1/practice/sessions/{session_id}/records", content=content, headers=_headers(alice)
    )
    leftovers, rows = await backend.settles_to([]), await _rows(engine)
    record_figure(
        "S5",
        f"upload, {scenario} [{backend.name}] -> {response.status_code} "
        f"{response.json()['error']['code']}; left in storage {len(leftovers)}, rows {rows}",
        part=current_test(),
    )
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert set(response.json()["error"]) >= {"code", "message"}
    assert leftovers == [] and rows == 0


def _oversize(limit: int) -> bytes:
    """A WAV part of limit + 1 bytes (the body's framing not counted)."""
    return WAV + b"\0" * (limit + 1 - len(WAV))


async def test_over_the_limit_with_content_length(
    backend: Backend, backend_client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    body = _body(
        _part('name="audio"; filename="big.wav"', _oversize(backend.settings.max_audio_file_size))
    )
    await _refused(
        backend_client, alice, backend, engine, "50 MiB + 1 byte with Content-Length",
        body, 413, "payload_too_large",
    )  # fmt: skip


async def test_over_the_limit_without_content_length(
    backend: Backend, backend_client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    """Streamed in 1 MiB pieces with no Content-Length: counted as it is written (on S3, as
    parts of a multipart upload, which is aborted)."""
    body = _body(
        _part('name="audio"; filename="big.wav"', _oversize(backend.settings.max_audio_file_size))
    )

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), MiB):
            yield body[start : start + MiB]

    await _refused(
        backend_client, alice, backend, engine, "50 MiB + 1 byte without Content-Length",
        pieces(), 413, "payload_too_large",
    )  # fmt: skip


async def test_wrong_magic_bytes(
    backend: Backend, backend_client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    body = _body(_part('name="audio"; filename="speech.wav"', b"#!/bin/sh\nrm -rf /\n" * 100))
    await _refused(
        backend_client, alice, backend, engine, "text named .wav (magic bytes)",
        body, 415, "unsupported_media_type",
    )  # fmt: skip


async def test_a_part_without_a_filename(
    backend: Backend, backend_client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    """`curl -F 'audio=<file.wav'`: the recording as a plain form value. It got 413 'Form
    fields are too large' (a 1 MB recording counted as form fields), not a word about the
    file."""
    recording = WAV + b"\0" * (MiB - len(WAV))
    body = _body(_part('name="audio"', recording, content_type=None))
    await _refused(
        backend_client, alice, backend, engine, "1 MB part without a filename",
        body, 422, "audio_not_a_file",
    )  # fmt: skip


async def test_an_empty_part(
    backend: Backend, backend_client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    body = _body(_part('name="audio"; filename="a.wav"', b""))
    await _refused(
        backend_client, alice, backend, engine, "empty audio part", body, 422, "empty_audio"
    )


async def test_two_audio_parts(
    backend: Backend, backend_client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    """The first one was stored, the second ignored (or, if large, 413 'Form fields')."""
    body = _body(
        _part('name="audio"; filename="a.wav"', WAV), _part('name="audio"; filename="b.wav"', WAV)
    )
    await _refused(
        backend_client, alice, backend, engine, "two audio parts", body, 422, "multiple_audio"
    )


async def test_a_field_name_that_is_not_utf8(
    backend: Backend, backend_client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    """Raw bytes in the part's name: it is not the audio field (it raised, a 500)."""
    part = _part('name="audio"; filename="a.wav"', WAV).replace(b'"audio"', b'"audio\xff\xfe"')
    await _refused(
        backend_client, alice, backend, engine, "field name not UTF-8",
        _body(part), 422, "missing_audio",
    )  # fmt: skip


@pytest.mark.parametrize(
    "disposition",
    [
        'name="audio"; filename="../../../etc/passwd.wav"',
        'name="audio"; filename="C:\\\\Windows\\\\system32\\\\a.wav"',
        'name="audio"; filename="録音 ünïcödé.wav"',
        "name=\"audio\"; filename*=UTF-8''%E9%8C%B2%E9%9F%B3%2F..%2Fx.wav",
    ],
    ids=["dot-dot", "windows", "utf8", "rfc5987"],
)
async def test_hostile_file_names_get_a_server_key(
    backend: Backend,
    backend_client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    disposition: str,
) -> None:
    session_id = await _session(backend_client, alice)
    body = _body(_part(disposition, WAV))
    response = await backend_client.post(
        f"/api/v1/practice/sessions/{session_id}/records",
        content=body,
        headers=_headers(alice),
    )
    assert response.status_code == 201, response.text
    async with engine.connect() as connection:
        key = await connection.scalar(text("SELECT audio_storage_key FROM practice_records"))
    leftovers = await backend.settles_to([key])
    record_figure(
        "S5",
        f"upload, file name {disposition.split('; ', 1)[1]!r} [{backend.name}] -> "
        f"{response.status_code}, server key {key}",
        part=current_test(),
    )
    assert leftovers == [key]
    assert key.startswith(f"recordings/{alice.user_id}/") and key.endswith(".wav")
    assert ".." not in key and "passwd" not in key and "\\" not in key and key.isascii()


async def test_a_dropped_upload_leaves_nothing(
    backend: Backend, backend_client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    """A real server and a client that goes away mid-body, after the writing has begun (a
    partial file, or a multipart upload with parts): all of it goes."""
    session_id = await _session(backend_client, alice)
    server = UvicornThread(create_app(backend.settings)).start()
    try:
        head = _part('name="audio"; filename="a.wav"', b"")[: -len(b"\r\n")]
        recording = WAV + b"\0" * (40 * MiB)
        request = (
            f"POST /api/v1/practice/sessions/{session_id}/records HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer {alice.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(head) + len(recording) + 100}\r\n\r\n"
        ).encode()
        sock = socket.create_connection(("127.0.0.1", server.port))
        try:
            await asyncio.to_thread(sock.sendall, request + head + recording[: 20 * MiB])
            began = await _poll(lambda: _writing(backend), 30.0)
            assert began, "the upload never began writing"
        finally:
            sock.close()
        leftovers = await backend.settles_to([], within=30.0)  # the server still running
    finally:
        server.stop()
    rows = await _rows(engine)
    record_figure(
        "S5",
        f"upload, client gone after 20 MiB of 40 [{backend.name}] -> "
        f"left in storage {len(leftovers)}, rows {rows}",
        part=current_test(),
    )
    assert leftovers == [] and rows == 0


def _writing(backend: Backend) -> bool:
    """A partial file (local) or an unfinished multipart upload (S3) exists."""
    return any(".partial" in name or "/.uploads/" in name for name in backend.leftovers())


async def _poll(condition: Callable[[], bool], within: float) -> bool:
    """Whether `condition` (blocking: run in a thread) holds within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return True
        await asyncio.sleep(0.05)
    return False
