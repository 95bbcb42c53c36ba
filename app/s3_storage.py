"""Recordings in an S3-compatible object store, through obstore.

obstore (Rust's `object_store` behind a typed Python API, maintained by Development Seed) gives
an async multipart writer that aborts the upload when its block raises, an async chunked GET
stream and a blocking seekable reader over ranged GETs, with signing, retries and timeouts of
its own: nothing here speaks HTTP. aioboto3 would need botocore's sync-shaped calls wrapped
and the multipart protocol (create, upload part, complete, abort) written by hand.

Memory per upload is bounded by PART_BYTES * (PART_CONCURRENCY + 1): a recording under one
part is a single PUT at the end, a larger one a multipart upload whose parts go out as they
fill. Nothing reaches the bucket until the upload completes, so a failed or aborted upload
leaves no object.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, BinaryIO

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import S3Store

from app.storage import CHUNK_SIZE, AudioWriter, StorageUnavailable, new_stem

if TYPE_CHECKING:
    from obstore import AsyncWritableFile, ReadableFile

    from app.settings import Settings

log = logging.getLogger(__name__)

# S3's smallest part (but the last) is 5 MiB.
PART_BYTES = 5 * 1024 * 1024
PART_CONCURRENCY = 2
READ_BUFFER_BYTES = 1024 * 1024
CONNECT_TIMEOUT = timedelta(seconds=5)
# A whole request, its body included: a GET streamed to a slow AI service lasts as long as
# the AI call (which has its own deadline); obstore's default, 30 s, would cut it.
REQUEST_TIMEOUT = timedelta(hours=1)
RETRY = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}
# obstore raises its own errors from requests and OSError from its buffered files.
S3_ERRORS = (BaseError, OSError)


class _S3Writer:
    def __init__(self, key: str, file: AsyncWritableFile) -> None:
        self.key = key
        self.size = 0
        self._file = file
        self._hash = hashlib.sha256()

    async def write(self, chunk: bytes) -> None:
        try:
            await self._file.write(chunk)
        except S3_ERRORS as exc:
            raise StorageUnavailable(f"S3 write of {self.key}: {exc}") from exc
        self._hash.update(chunk)
        self.size += len(chunk)

    def sha256(self) -> str:
        return self._hash.hexdigest()


class _BlockingObject(io.RawIOBase):
    """obstore's ReadableFile (ranged GETs) as a raw binary stream, as decoders want it.

    A failed GET is StorageUnavailable, never an OSError: the MP3/AAC decoder takes an
    OSError for a file cut short and would report the duration of what it had read. The
    WAV/FLAC decoder (libsndfile, through cffi callbacks) cannot pass an exception on at all
    and reports "undecodable": so the first failure is raised again by close(), at the end
    of the reader's `with` block."""

    def __init__(self, key: str, reader: ReadableFile) -> None:
        self._key = key
        self._reader = reader
        self._failure: StorageUnavailable | None = None

    def _failed(self, exc: Exception) -> StorageUnavailable:
        failure = StorageUnavailable(f"S3 read of {self._key}: {exc}")
        failure.__cause__ = exc
        self._failure = self._failure or failure
        return failure

    def close(self) -> None:
        failure, self._failure = self._failure, None
        super().close()
        if failure is not None:
            raise failure

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._reader.read(len(buffer))
        except S3_ERRORS as exc:
            raise self._failed(exc) from exc
        size = len(data)
        memoryview(buffer).cast("B")[:size] = memoryview(data)
        return size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self._reader.seek(offset, whence)
        except S3_ERRORS as exc:
            raise self._failed(exc) from exc

    def tell(self) -> int:
        return self._reader.tell()


class S3Storage:
    """Recordings as objects `<S3_KEY_PREFIX>/<key>` in one bucket (`<key>` without one)."""

    def __init__(self, store: S3Store) -> None:
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        """The store S3_* settings describe (the bucket must exist)."""
        config: dict[str, Any] = {"region": settings.s3_region}
        if settings.s3_endpoint_url:
            config["endpoint"] = settings.s3_endpoint_url
        if settings.s3_access_key_id and settings.s3_secret_access_key:
            config["access_key_id"] = settings.s3_access_key_id
            config["secret_access_key"] = settings.s3_secret_access_key
        endpoint = settings.s3_endpoint_url or ""
        client = {
            "allow_http": endpoint.startswith("http://"),  # a private network's plain HTTP
            "connect_timeout": CONNECT_TIMEOUT,
            "timeout": REQUEST_TIMEOUT,
        }
        store = S3Store(
            settings.s3_bucket,
            prefix=settings.s3_key_prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options=client,  # type: ignore[arg-type]
            retry_config=RETRY,  # type: ignore[arg-type]
        )
        return cls(store)

    def new_stem(self, owner: uuid.UUID) -> str:
        """`recordings/<owner>/<random hex>` (app.storage.new_stem), under the prefix."""
        return new_stem(owner)

    @contextlib.asynccontextmanager
    async def writer(self, key: str) -> AsyncIterator[AudioWriter]:
        """Stream into `key`: parts go out as they fill; the object appears when the block
        completes; a block that raises aborts the upload (its parts are discarded)."""
        file = obstore.open_writer_async(
            self.store, key, buffer_size=PART_BYTES, max_concurrency=PART_CONCURRENCY
        )
        try:
            yield _S3Writer(key, file)
        except BaseException:
            try:
                await file.__aexit__(*sys.exc_info())  # aborts the multipart upload
            except Exception:  # the first error is the one to report
                log.warning("aborting the S3 upload of %s failed", key, exc_info=True)
            raise
        try:
            await file.close()
        except S3_ERRORS as exc:
            raise StorageUnavailable(f"S3 upload of {key}: {exc}") from exc

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """One streamed GET, in chunks of at least CHUNK_SIZE bytes (the last may be shorter);
        FileNotFoundError: no such object; StorageUnavailable: the store failed."""
        try:
            result = await obstore.get_async(self.store, key)
        except (FileNotFoundError, NotFoundError) as exc:
            raise FileNotFoundError(key) from exc
        except S3_ERRORS as exc:
            raise StorageUnavailable(f"S3 read of {key}: {exc}") from exc
        try:
            async for chunk in result.stream(min_chunk_size=CHUNK_SIZE):
                yield chunk
        except S3_ERRORS as exc:
            raise StorageUnavailable(f"S3 read of {key}: {exc}") from exc

    async def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error (StorageUnavailable otherwise)."""
        try:
            await obstore.delete_async(self.store, key)
        except (FileNotFoundError, NotFoundError):
            return
        except S3_ERRORS as exc:
            raise StorageUnavailable(f"S3 delete of {key}: {exc}") from exc

    def open_blocking(self, key: str) -> BinaryIO:
        """A seekable reader over ranged GETs of READ_BUFFER_BYTES (one HEAD to open it):
        blocking, call and use it in a thread. FileNotFoundError: no such object; a failed
        GET is StorageUnavailable, raised again on close (see _BlockingObject)."""
        try:
            reader = obstore.open_reader(self.store, key, buffer_size=READ_BUFFER_BYTES)
        except (FileNotFoundError, NotFoundError) as exc:
            raise FileNotFoundError(key) from exc
        except S3_ERRORS as exc:
            raise StorageUnavailable(f"S3 read of {key}: {exc}") from exc
        return io.BufferedReader(_BlockingObject(key, reader), READ_BUFFER_BYTES)
