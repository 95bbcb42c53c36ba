"""The worker reads at most AI_MAX_ANSWER_BYTES of one answer of the AI service (a JSON result,
an error body, one NDJSON line): it read every answer whole, so one endless or huge answer
could take the worker's memory, and with it every task the worker ran. Past the bound the
answer is the service's malformed answer (retried as `ai_service`); an error answer keeps its
status and its first words. The answers come from a real HTTP server (aiohttp's test server)
that writes them in the chunks given; the line reader is also given chunks directly, cut at
every seventh byte (a network may join the server's chunks)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Mapping

import pytest

from app.ai_client.client import NDJSON, AIClient, _lines
from app.ai_client.errors import AIServiceError, InvalidInput, ServiceBusy
from app.ai_client.wire import ProgressLine
from app.settings import Settings
from tests.ai_server import serving

LIMIT = 4096
WITHIN = 10.0  # seconds: an unbounded read of an endless answer never ends
RESULT = {"overall_score": 80.0, "detailed_analysis": {}}


async def _audio() -> AsyncIterator[bytes]:
    yield b"RIFF" + bytes(64)


async def _analyze(
    settings: Settings,
    status: int,
    chunks: Iterable[bytes],
    headers: Mapping[str, str],
    *,
    endless: bytes | None = None,
    seen: list[ProgressLine] | None = None,
) -> object:
    async def progress(line: ProgressLine) -> None:
        if seen is not None:
            seen.append(line)

    async with serving(status, chunks, headers, endless) as url:
        update = {"ai_max_answer_bytes": LIMIT, "ai_service_url": url}
        client = AIClient(settings.model_copy(update=update))
        try:
            async with asyncio.timeout(WITHIN):
                return await client.analyze(_audio(), "audio/wav", {}, "t1:1", progress)
        finally:
            await client.aclose()


async def _chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.mark.parametrize(
    ("content_type", "endless", "words"),
    [
        ("application/json", b"[1," * 1000, "result is longer than 4096 bytes"),
        (NDJSON, b'{"event": "progress", "progress": 1, "message": "' + b"a" * 1000, "A line"),
    ],
    ids=["result", "ndjson line"],
)
async def test_an_endless_answer_is_the_services_error_once_past_the_bound(
    settings: Settings, content_type: str, endless: bytes, words: str
) -> None:
    with pytest.raises(AIServiceError, match=words):
        await _analyze(settings, 200, [], {"Content-Type": content_type}, endless=endless)


async def test_an_endless_error_answer_keeps_its_status_and_its_first_words(
    settings: Settings,
) -> None:
    with pytest.raises(InvalidInput) as refused:
        headers = {"Content-Type": NDJSON}
        await _analyze(settings, 422, [b'{"error": '], headers, endless=b"x" * 1000)
    message = refused.value.message
    assert message.startswith('AI service answered 422 ({"error": xxx'), message
    assert len(message) < 300, len(message)


async def test_lines_cut_anywhere_are_read_whole_and_a_long_line_after_the_result_is_ignored(
    settings: Settings,
) -> None:
    lines = [
        {"event": "progress", "progress": 10, "step": "decoding", "message": "é\u2028\x85" * 50},
        {"event": "progress", "progress": 50, "step": "scoring", "message": "中" * 100},
        {"event": "result", "result": RESULT},
    ]
    body = b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\r\n" for line in lines)
    # Seven-byte chunks cut lines, their \r\n and the characters' UTF-8 bytes (U+0085 and
    # U+2028, which a JSON string holds as they are, end no line); after the
    # result, a line past the bound (only the connection is lost, never the result).
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)] + [b"{" + b"a" * (2 * LIMIT)]
    read = [line async for line in _lines(_chunks(chunks[:-1]), LIMIT)]
    assert read == [json.dumps(line, ensure_ascii=False) for line in lines]
    seen: list[ProgressLine] = []
    result = await _analyze(settings, 200, chunks, {"Content-Type": NDJSON}, seen=seen)
    assert [(line.progress, line.message) for line in seen] == [
        (10, "é\u2028\x85" * 50),
        (50, "中" * 100),
    ]
    assert getattr(result, "overall_score", None) == 80.0


@pytest.mark.parametrize("charset", ["base64", "idna", "undefined", "latin-1", "no-such-codec"])
async def test_an_error_answer_in_an_odd_charset_keeps_its_status_and_its_first_words(
    settings: Settings, charset: str
) -> None:
    """The first words of an error answer that is not our JSON are decoded by the charset the
    answer names: one that is no text encoding (base64) or that cannot replace what it cannot
    read (idna, undefined) raised LookupError or UnicodeError, which lost the answer's status
    (a busy service's 503 and its Retry-After became an unexpected error)."""
    headers = {"Content-Type": f"text/plain; charset={charset}", "Retry-After": "7"}
    with pytest.raises(ServiceBusy) as busy:
        await _analyze(settings, 503, [b"busy: try later"], headers)
    assert busy.value.message == "AI service answered 503 (busy: try later)", busy.value.message
    assert busy.value.retry_after == 7.0


@pytest.mark.parametrize("chunk", [7, 1 << 20], ids=["7-byte chunks", "one chunk"])
async def test_a_line_past_the_bound_is_refused_however_it_is_cut(
    settings: Settings, chunk: int
) -> None:
    """A line longer than the bound is the service's error whether its end comes in the chunk
    that takes it past the bound or not: one whose end came in that chunk was read whole."""
    long_line = {"event": "progress", "progress": 10, "message": "a" * LIMIT}
    body = b"".join(
        json.dumps(line).encode() + b"\n"
        for line in (long_line, {"event": "result", "result": RESULT})
    )
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    with pytest.raises(AIServiceError, match="A line of the AI service's answer is longer"):
        await _analyze(settings, 200, chunks, {"Content-Type": NDJSON})
    with pytest.raises(AIServiceError, match="A line of the AI service's answer is longer"):
        async for _ in _lines(_chunks(chunks), LIMIT):
            pass
