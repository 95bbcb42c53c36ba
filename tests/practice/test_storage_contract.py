"""The storage contract (app.storage.Storage), one suite for both backends: the local
filesystem and S3 on a real SeaweedFS. What the upload path adds on top (413, 415, a dropped
upload, 50 MiB + 1 byte without Content-Length) is in test_upload_abuse.py, on both too."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audio_types import MP3, WAV, decoded_duration
from app.embedded import free_port
from app.main import create_app
from app.storage import CHUNK_SIZE, StorageUnavailable, from_settings
from tests.audio import make_mp3, make_wav
from tests.conftest import ApiUser
from tests.practice.conftest import Backend

MiB = 1024 * 1024
# Above S3's 5 MiB part: a multipart upload of three parts (the last one short).
LARGE = 12 * MiB + 3


class Boom(Exception):
    pass


async def _write(backend: Backend, key: str, content: bytes, piece: int = MiB) -> int:
    async with backend.storage.writer(key) as writer:
        for start in range(0, len(content), piece):
            await writer.write(content[start : start + piece])
    # The writer hashed what went by (the result cache's key): the content's own SHA-256.
    assert writer.sha256() == hashlib.sha256(content).hexdigest()
    return writer.size


@pytest.mark.parametrize("size", [10, CHUNK_SIZE + 1, LARGE], ids=["tiny", "chunk+1", "12MiB"])
async def test_write_stream_read_delete(backend: Backend, size: int) -> None:
    key = backend.storage.new_stem(uuid.uuid4()) + ".wav"
    content = os.urandom(size)
    assert await _write(backend, key, content) == size
    assert await backend.settles_to([key]) == [key]

    chunks = [chunk async for chunk in backend.storage.read(key)]
    assert b"".join(chunks) == content
    assert all(chunks) and max(map(len, chunks)) <= MiB  # streamed in bounded chunks

    with backend.storage.open_blocking(key) as reader:  # what the duration decoder reads
        assert reader.read(4) == content[:4]
        reader.seek(-3, os.SEEK_END)
        assert reader.read() == content[-3:]

    await backend.storage.delete(key)
    await backend.storage.delete(key)  # a missing key is not an error
    assert await backend.settles_to([]) == []
    with pytest.raises(FileNotFoundError):
        await anext(backend.storage.read(key))


async def test_the_hash_follows_the_chunks_as_written(backend: Backend) -> None:
    """Uneven pieces, an empty one among them: each byte is hashed once, in order (a writer
    that hashed a piece twice, or skipped the first, would differ)."""
    key = backend.storage.new_stem(uuid.uuid4()) + ".wav"
    content = os.urandom(3 * MiB + 17)
    async with backend.storage.writer(key) as writer:
        assert writer.sha256() == hashlib.sha256(b"").hexdigest()
        for piece in (content[:5], b"", content[5 : MiB + 3], content[MiB + 3 :]):
            await writer.write(piece)
    assert writer.sha256() == hashlib.sha256(content).hexdigest()
    assert b"".join([chunk async for chunk in backend.storage.read(key)]) == content


async def test_an_upload_stores_the_recordings_hash(
    backend: Backend, backend_client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    """Through the streaming upload on each backend: the record carries the SHA-256 of the
    bytes uploaded (the recording is not read back for it), in its row and its API answer."""
    audio = make_wav(2.0)
    created = await backend_client.post("/api/v1/practice/sessions", json={}, headers=alice.headers)
    response = await backend_client.post(
        f"/api/v1/practice/sessions/{created.json()['practice_session_id']}/records",
        files={"audio": ("a.wav", audio, "audio/wav")},
        headers=alice.headers,
    )
    assert response.status_code == 201, response.text
    expected = hashlib.sha256(audio).hexdigest()
    assert response.json()["audio_sha256"] == expected
    async with engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT audio_sha256 FROM practice_records WHERE practice_record_id = :r"),
            {"r": response.json()["practice_record_id"]},
        )
    assert stored == expected


@pytest.mark.parametrize("size", [10, LARGE], ids=["before-a-part", "after-two-parts"])
async def test_a_write_that_fails_leaves_nothing(backend: Backend, size: int) -> None:
    key = backend.storage.new_stem(uuid.uuid4()) + ".wav"
    with pytest.raises(Boom):
        async with backend.storage.writer(key) as writer:
            for start in range(0, size, MiB):
                await writer.write(os.urandom(min(MiB, size - start)))
            raise Boom
    assert await backend.settles_to([]) == []
    with pytest.raises(FileNotFoundError):
        await anext(backend.storage.read(key))


@pytest.mark.parametrize("kind", ["wav", "mp3"])
async def test_the_duration_is_decoded_from_storage(backend: Backend, kind: str) -> None:
    """What the upload reports as audio_duration_seconds: a WAV's header, an MP3 decoded to
    its end (ranged reads on S3)."""
    audio, audio_type = (make_wav(1.5), WAV) if kind == "wav" else (make_mp3(1.0), MP3)
    key = backend.storage.new_stem(uuid.uuid4()) + "." + audio_type.extension
    await _write(backend, key, audio)

    def measure() -> float | None:
        with backend.storage.open_blocking(key) as reader:
            return decoded_duration(reader, audio_type)

    expected = 1.5 if kind == "wav" else 1.0
    assert await asyncio.to_thread(measure) == pytest.approx(expected, abs=0.03)


async def test_a_reader_that_stops_early(backend: Backend) -> None:
    key = backend.storage.new_stem(uuid.uuid4()) + ".wav"
    await _write(backend, key, os.urandom(3 * MiB))
    reader = backend.storage.read(key)
    assert len(await anext(reader)) > 0
    await reader.aclose()  # type: ignore[attr-defined]
    assert [chunk async for chunk in backend.storage.read(key)]  # still there, still readable


async def test_keys_are_kept_apart_by_the_prefix(s3_backend: Backend) -> None:
    backend = s3_backend
    key = backend.storage.new_stem(uuid.uuid4()) + ".wav"
    await _write(backend, key, b"RIFF....WAVE")
    assert await backend.settles_to([key]) == [key]
    prefix = backend.settings.s3_key_prefix
    assert prefix and key.startswith("recordings/")
    assert prefix + key in _whole_bucket(backend)


def _whole_bucket(backend: Backend) -> list[str]:
    import obstore

    from app.s3_storage import S3Storage

    storage = S3Storage.from_settings(backend.settings.model_copy(update={"s3_key_prefix": None}))
    return [meta["path"] for meta in obstore.list(storage.store).collect()]


async def test_an_unreachable_s3_is_storage_unavailable(s3_backend: Backend) -> None:
    """A `resource` error for the worker's retry policy (worker/retry.py), not an unknown
    one: writes, reads and deletes alike."""
    gone = s3_backend.settings.model_copy(
        update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}
    )
    storage = from_settings(gone)
    with pytest.raises(StorageUnavailable):
        async with storage.writer("recordings/x.wav") as writer:
            await writer.write(b"RIFF....WAVE")
    with pytest.raises(StorageUnavailable):
        await anext(storage.read("recordings/x.wav"))
    with pytest.raises(StorageUnavailable):
        await storage.delete("recordings/x.wav")


# libsndfile's cffi callback reports the failure it cannot pass on as "ignored".
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kind", ["wav", "mp3"])
async def test_a_failed_ranged_read_is_storage_unavailable(s3_backend: Backend, kind: str) -> None:
    """The object gone between the decoder's open and its first read: StorageUnavailable (a
    503 on upload), not a duration of None (libsndfile cannot pass the error on) or of what
    was read (the MP3 decoder takes an OSError for a file cut short)."""
    backend = s3_backend
    audio, audio_type = (make_wav(1.5), WAV) if kind == "wav" else (make_mp3(1.0), MP3)
    key = backend.storage.new_stem(uuid.uuid4()) + "." + audio_type.extension
    await _write(backend, key, audio)

    def measure() -> float | None:
        with backend.storage.open_blocking(key) as reader:
            asyncio.run(backend.storage.delete(key))
            return decoded_duration(reader, audio_type)

    with pytest.raises(StorageUnavailable):
        await asyncio.to_thread(measure)


async def test_an_upload_to_an_unreachable_s3_is_503(
    s3_backend: Backend, alice: ApiUser, engine: AsyncEngine
) -> None:
    """The one error shape with 503 storage_unavailable (it was a 500), and no row."""
    gone = s3_backend.settings.model_copy(
        update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}
    )
    application = create_app(gone)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            created = await client.post("/api/v1/practice/sessions", json={}, headers=alice.headers)
            session_id = created.json()["practice_session_id"]
            response = await client.post(
                f"/api/v1/practice/sessions/{session_id}/records",
                files={"audio": ("a.wav", make_wav(0.5), "audio/wav")},
                headers=alice.headers,
            )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "storage_unavailable"
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM practice_records")) == 0
