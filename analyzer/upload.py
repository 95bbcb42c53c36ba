"""Streams the request body to a temporary file, enforcing size and audio type."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fastapi import Request

from analyzer.decoding import MEDIA_TYPES, SNIFF_BYTES, sniff
from analyzer.errors import AnalyzerError


def _too_large(limit: int) -> AnalyzerError:
    return AnalyzerError(413, "payload_too_large", f"the body exceeds {limit} bytes")


def _unsupported(detail: str) -> AnalyzerError:
    return AnalyzerError(415, "unsupported_media_type", detail)


def discard(path: Path) -> None:
    """Delete a spooled upload (a local unlink; fine to call from the event loop)."""
    path.unlink(missing_ok=True)


def check_headers(request: Request, max_bytes: int) -> None:
    """Reject by Content-Type and declared Content-Length before reading anything."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise _unsupported(f"Content-Type {media or '(none)'!r} is not a supported audio type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)


async def spool(request: Request, max_bytes: int) -> tuple[Path, str]:
    """Write the body to a temporary file; returns its path and the sniffed container."""
    fd, name = tempfile.mkstemp(prefix="analyzer-", suffix=".upload")
    path = Path(name)
    head = b""
    total = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                total += len(chunk)
                if total > max_bytes:
                    raise _too_large(max_bytes)
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                    if len(head) >= SNIFF_BYTES and sniff(head) is None:
                        raise _unsupported("the content is not a recognised audio format")
                out.write(chunk)
        if total == 0:
            raise AnalyzerError(422, "empty_audio", "the request body is empty")
        container = sniff(head)
        if container is None:
            raise _unsupported("the content is not a recognised audio format")
        return path, container
    except BaseException:
        discard(path)
        raise
