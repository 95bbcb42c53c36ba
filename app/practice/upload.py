"""Streaming multipart upload of one audio file straight into storage.

FastAPI's `UploadFile` spools the whole body before the handler runs; here the body is parsed
as it arrives, the file part's type is checked by its magic bytes, its size is counted while it
is written, and any failure removes the partial file.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.audio_types import SNIFF_BYTES, AudioType, sniff_audio_type
from app.errors import AppError
from app.storage import AudioWriter, Storage

FILE_FIELDS = frozenset({"audio", "file"})
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# `filename*=UTF-8''...` (RFC 5987, which RFC 7578 forbids in forms but clients send):
# python-multipart drops it from the options. The name is never used (keys are ours).
RFC5987_FILENAME = re.compile(rb";\s*filename\*\s*=", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class StoredAudio:
    key: str
    audio_type: AudioType
    size: int
    sha256: str  # of the content, hex (computed by the writer as it was stored)


def too_large(limit: int) -> AppError:
    return AppError(
        413, "payload_too_large", f"Audio exceeds the {limit} byte limit", details={"limit": limit}
    )


@dataclass
class _PartEvents:
    """Collects the parser's synchronous callbacks so they can be handled asynchronously."""

    header_field: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    events: list[tuple[str, bytes]] = field(default_factory=list)

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self.headers = {}
        self.header_field = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field = data[start:end].lower()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.headers[self.header_field] = self.headers.get(self.header_field, b"") + data[start:end]

    def _headers_finished(self) -> None:
        """A part's kind: "file" (the recording), "bare" (a recording field sent as a plain
        form value, without a filename) or "skip" (any other field)."""
        disposition = self.headers.get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        kind = "skip"
        if name in FILE_FIELDS:
            named = b"filename" in options or RFC5987_FILENAME.search(disposition) is not None
            kind = "file" if named else "bare"
        self.events.append((kind, b""))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", bytes(data[start:end])))

    def _part_end(self) -> None:
        self.events.append(("end", b""))


class _AudioSink:
    """Receives the file part's bytes: sniffs its type, then writes it, counting its size."""

    def __init__(self, storage: Storage, owner_key: str, limit: int, formats: tuple[str, ...]):
        self._storage = storage
        self._owner_key = owner_key
        self._limit = limit
        self._formats = formats
        self._head = b""
        self._writer: AudioWriter | None = None
        self.audio_type: AudioType | None = None
        self.size = 0
        self.stack = contextlib.AsyncExitStack()

    async def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._limit:
            raise too_large(self._limit)
        if self._writer is None:
            self._head += chunk
            if len(self._head) >= SNIFF_BYTES:
                await self._open()
            return
        await self._writer.write(chunk)

    async def _open(self) -> None:
        audio_type = sniff_audio_type(self._head)
        if audio_type is None or audio_type.format not in self._formats:
            raise AppError(
                415,
                "unsupported_media_type",
                "The file is not audio in a supported format",
                details={"supported_formats": list(self._formats)},
            )
        self.audio_type = audio_type
        key = f"{self._owner_key}.{audio_type.extension}"
        self._writer = await self.stack.enter_async_context(self._storage.writer(key))
        head, self._head = self._head, b""
        await self._writer.write(head)

    async def finish(self) -> StoredAudio:
        if self._writer is None:
            if not self._head:
                raise AppError(422, "empty_audio", "The audio file is empty")
            await self._open()
        assert self._writer is not None and self.audio_type is not None
        return StoredAudio(self._writer.key, self.audio_type, self.size, self._writer.sha256())


@contextlib.asynccontextmanager
async def receive_audio(
    request: Request, storage: Storage, key_stem: str, limit: int, formats: tuple[str, ...]
) -> AsyncIterator[StoredAudio]:
    """Stream the request's audio part into storage and yield what was stored.

    The file is kept only if the body of the `async with` completes; otherwise it is deleted.
    """
    boundary = _boundary(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD_BYTES:
        raise too_large(limit)
    sink = _AudioSink(storage, key_stem, limit, formats)
    async with sink.stack:
        stored = await _parse(request, boundary, sink)
    try:
        yield stored
    except BaseException:
        await storage.delete(stored.key)
        raise


async def _parse(request: Request, boundary: bytes, sink: _AudioSink) -> StoredAudio:
    collector = _PartEvents()
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    target, done, other_bytes = False, False, 0
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            for kind, data in collector.events:
                if kind == "bare":
                    raise AppError(
                        422,
                        "audio_not_a_file",
                        "The 'audio' part has no filename: send the recording as a file "
                        "(curl -F 'audio=@recording.wav')",
                    )
                if kind == "file" and done:
                    raise AppError(
                        422, "multiple_audio", "Send one recording per request, in one 'audio' part"
                    )
                if kind == "file":
                    target = True
                elif kind == "data" and target:
                    await sink.feed(data)
                elif kind == "data":
                    other_bytes += len(data)
                    if other_bytes > MULTIPART_OVERHEAD_BYTES:
                        raise AppError(413, "payload_too_large", "Form fields are too large")
                elif kind == "end" and target:
                    target, done = False, True
            collector.events.clear()
    except ClientDisconnect as exc:
        raise AppError(400, "incomplete_upload", "The upload was interrupted") from exc
    except MultipartParseError as exc:
        raise AppError(400, "malformed_multipart", f"Malformed multipart body: {exc}") from exc
    if not done:
        raise AppError(422, "missing_audio", "Send the recording as a multipart file field 'audio'")
    return await sink.finish()


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise AppError(415, "unsupported_media_type", "Upload the recording as multipart/form-data")
    return boundary
