"""Recording storage behind a small async, chunked interface.

The local backend keeps files under STORAGE_DIR; blocking file I/O runs in threads so the
event loop never waits on the disk. The S3 backend (`app.s3_storage`) implements the same
protocol; `from_settings` picks one (STORAGE_BACKEND).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from app.settings import Settings

CHUNK_SIZE = 256 * 1024


class StorageUnavailable(Exception):
    """The storage backend could not be reached or written (a `resource` error)."""


class AudioWriter(Protocol):
    key: str
    size: int

    async def write(self, chunk: bytes) -> None: ...

    def sha256(self) -> str:
        """The SHA-256 of everything written so far, 64 lowercase hex digits: computed as the
        chunks went by (the result cache's key, app.analysis.cache), never by reading back."""
        ...


class Storage(Protocol):
    def new_stem(self, owner: uuid.UUID) -> str:
        """A new key without its extension (known only once the content is sniffed)."""
        ...

    def writer(self, key: str) -> contextlib.AbstractAsyncContextManager[AudioWriter]:
        """Write `key` as it arrives; it exists once the block completes, and nothing of it is
        left when the block raises (StorageUnavailable when the backend fails)."""
        ...

    def read(self, key: str) -> AsyncIterator[bytes]:
        """The content of `key` in chunks of bounded size (FileNotFoundError: no such key;
        StorageUnavailable: the backend failed)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""
        ...

    def open_blocking(self, key: str) -> BinaryIO:
        """A seekable, blocking reader of `key` for decoders (call and use it in a thread)."""
        ...


def new_stem(owner: uuid.UUID) -> str:
    """A new recording key without its extension: `recordings/<owner>/<random hex>`."""
    return f"recordings/{owner}/{uuid.uuid4().hex}"


def from_settings(settings: Settings) -> Storage:
    """The backend STORAGE_BACKEND names: LocalStorage(STORAGE_DIR) or S3Storage."""
    if settings.storage_backend == "s3":
        from app.s3_storage import S3Storage

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.storage_dir)


def _read_chunk(handle: IO[bytes]) -> bytes:
    """The next chunk (at most CHUNK_SIZE bytes); the file is closed with its last, short
    chunk, in the same thread hop (a short read of a regular file is its end)."""
    chunk = handle.read(CHUNK_SIZE)
    if len(chunk) < CHUNK_SIZE:
        handle.close()
    return chunk


def _open_and_read(path: Path) -> tuple[IO[bytes], bytes]:
    """The open file and its first chunk: a recording of one chunk costs one thread hop,
    not four (open, read, the empty read, close)."""
    handle = path.open("rb")
    try:
        return handle, _read_chunk(handle)
    except BaseException:
        handle.close()
        raise


class _LocalWriter:
    def __init__(self, key: str, handle: IO[bytes]) -> None:
        self.key = key
        self.size = 0
        self._handle = handle
        self._hash = hashlib.sha256()

    def _write(self, chunk: bytes) -> None:
        """Write and hash in the same thread hop (hashlib releases the GIL on large chunks)."""
        self._handle.write(chunk)
        self._hash.update(chunk)

    async def write(self, chunk: bytes) -> None:
        try:
            await asyncio.to_thread(self._write, chunk)
        except OSError as exc:  # a full disk: the API's 503, not a 500
            raise StorageUnavailable(str(exc)) from exc
        self.size += len(chunk)

    def sha256(self) -> str:
        return self._hash.hexdigest()


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def new_stem(self, owner: uuid.UUID) -> str:
        return new_stem(owner)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return path

    def open_blocking(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    @contextlib.asynccontextmanager
    async def writer(self, key: str) -> AsyncIterator[AudioWriter]:
        """Write to a temporary name and rename on success; delete it on any failure."""
        path = self._path(key)
        partial = path.with_name(f".{path.name}.partial")
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            handle = await asyncio.to_thread(open, partial, "xb")
        except OSError as exc:
            raise StorageUnavailable(str(exc)) from exc
        try:
            yield _LocalWriter(key, handle)
            try:
                await asyncio.to_thread(handle.close)
                await asyncio.to_thread(os.replace, partial, path)
            except OSError as exc:
                raise StorageUnavailable(str(exc)) from exc
        except BaseException:
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise

    async def read(self, key: str) -> AsyncIterator[bytes]:
        try:
            handle, chunk = await asyncio.to_thread(_open_and_read, self._path(key))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageUnavailable(str(exc)) from exc
        try:
            while chunk:
                yield chunk
                if handle.closed:
                    return
                chunk = await asyncio.to_thread(_read_chunk, handle)
        finally:
            if not handle.closed:  # the reader stopped early
                await asyncio.to_thread(handle.close)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
