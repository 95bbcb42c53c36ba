"""What the AI client makes of the network between it and the service (a raw TCP server stands
in for the service or a proxy): every failure is one of our AnalysisError classes, by what
happened (httpx-aiohttp's mapping, used before, called a closed connection a connect timeout
and let a malformed answer out as aiohttp's error, which the retry policy does not know); a
proxy named by the environment is used, as httpx would, unless `no_proxy` covers the
service."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.ai_client.client import NDJSON, AIClient
from app.ai_client.errors import AIServiceError, ErrorClass, NetworkError
from app.ai_client.wire import ProgressLine
from app.settings import Settings
from app.storage import StorageUnavailable
from tests.ai_server import serving
from worker.retry import classify

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _audio() -> AsyncIterator[bytes]:
    yield b"RIFF" + bytes(64)


async def _ignore(line: ProgressLine) -> None:
    return None


async def _close_before_answering(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def _answer_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize(
    ("answer", "words"),
    [(_close_before_answering, "unreachable"), (_answer_garbage, "unreachable")],
    ids=["closed before answering", "not HTTP"],
)
async def test_a_broken_exchange_is_a_network_error(
    settings: Settings, answer: Answer, words: str
) -> None:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = AIClient(settings.model_copy(update={"ai_service_url": f"http://127.0.0.1:{port}"}))
    try:
        with pytest.raises(NetworkError, match=words):
            await client.analyze(_audio(), "audio/wav", {}, "t1:1", _ignore)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("bypassed", [False, True], ids=["through the proxy", "no_proxy"])
async def test_the_environment_proxy_carries_the_calls(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, bypassed: bool
) -> None:
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readline())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"127.0.0.1:{port}")  # no scheme: http://, as httpx
    monkeypatch.setenv("no_proxy", "ai.invalid" if bypassed else "localhost")
    # A host that does not resolve: only the proxy can carry the call.
    client = AIClient(settings.model_copy(update={"ai_service_url": "http://ai.invalid:9"}))
    try:
        with pytest.raises(NetworkError if bypassed else AIServiceError):
            await client.analyze(_audio(), "audio/wav", {}, "t1:1", _ignore)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert seen == ([] if bypassed else [b"POST http://ai.invalid:9/v1/analyze HTTP/1.1\r\n"])


@contextlib.asynccontextmanager
async def _answering_500(heads: list[bytes]) -> AsyncIterator[int]:
    """A raw HTTP server (a service, or a proxy) that keeps each request's head in `heads` and
    answers 500; yields its port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _refused_without_deprecations(client: AIClient, error: type[Exception]) -> None:
    """A call of `client` raises `error`, and nothing in it warns of a deprecation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            with pytest.raises(error):
                await client.analyze(_audio(), "audio/wav", {}, "t1:1", _ignore)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("service", "request_line", "error"),
    [
        ("http://ai.invalid:9", b"POST http://ai.invalid:9/v1/analyze HTTP/1.1", AIServiceError),
        ("https://ai.invalid", b"CONNECT ai.invalid:443 HTTP/1.1", NetworkError),
    ],
    ids=["http service", "https service (a tunnel)"],
)
async def test_the_environment_proxys_credentials_are_sent_to_it(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    service: str,
    request_line: bytes,
    error: type[Exception],
) -> None:
    """A proxy URL's credentials (percent-encoded in the URL, UTF-8 as httpx sends them) go
    to the proxy as Basic auth in Proxy-Authorization: on the request for an http service,
    on the CONNECT for an https one; never in the request line, without aiohttp's deprecated
    BasicAuth (a warning at every call)."""
    heads: list[bytes] = []
    async with _answering_500(heads) as port:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        proxy = f"http://us%40er:p%3Ass%C3%A9@127.0.0.1:{port}"  # pragma: allowlist secret
        monkeypatch.setenv("all_proxy", proxy)
        client = AIClient(settings.model_copy(update={"ai_service_url": service}))
        await _refused_without_deprecations(client, error)
    [head] = heads
    assert head.startswith(request_line + b"\r\n"), head
    credentials = base64.b64encode("us@er:p:ssé".encode())
    assert b"\r\nProxy-Authorization: Basic " + credentials + b"\r\n" in head, head


async def test_a_service_urls_credentials_are_sent_as_basic_auth(settings: Settings) -> None:
    """Credentials in the service's URL (and no key) are sent as Basic auth (UTF-8, as httpx
    sent them), never in the request line, without aiohttp's deprecated BasicAuth."""
    heads: list[bytes] = []
    async with _answering_500(heads) as port:
        url = f"http://us%40er:p%C3%A9@127.0.0.1:{port}/prefix"  # pragma: allowlist secret
        update = {"ai_service_url": url, "ai_service_api_key": ""}
        await _refused_without_deprecations(
            AIClient(settings.model_copy(update=update)), AIServiceError
        )
    [head] = heads
    assert head.startswith(b"POST /prefix/v1/analyze HTTP/1.1\r\n"), head
    credentials = base64.b64encode("us@er:pé".encode())
    assert b"\r\nAuthorization: Basic " + credentials + b"\r\n" in head, head


@pytest.mark.parametrize("name", ["all_proxy", "https_proxy"])
def test_a_socks_proxy_is_refused_at_start(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """aiohttp speaks HTTP to any proxy it is given: a SOCKS proxy from the environment would
    fail every call (and send the request to it in clear); it is a configuration error when
    the client is made, as httpx's was."""
    for other in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "no_proxy"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "socks5h://127.0.0.1:1080")
    with pytest.raises(ValueError, match="socks5h proxies are not supported"):
        AIClient(settings.model_copy(update={"ai_service_url": "https://ai.invalid"}))


def test_a_service_url_with_credentials_and_a_key_is_refused_at_start(settings: Settings) -> None:
    """Credentials in the service's URL (Basic auth) and a bearer key both make the
    Authorization header: aiohttp refused every call with a ValueError (each attempt an
    unexpected error); httpx had let the URL's replace the key. A configuration error when
    the client is made, without the password in its words."""
    url = "http://user:s3cret@ai.invalid"  # pragma: allowlist secret
    update = {"ai_service_url": url, "ai_service_api_key": "k3y"}  # pragma: allowlist secret
    with pytest.raises(ValueError, match="credentials and a bearer key") as refused:
        AIClient(settings.model_copy(update=update))
    assert "s3cret" not in str(refused.value)


DEEP = b"[" * 5000 + b"]" * 5000  # valid JSON, nested past Python's recursion limit


@pytest.mark.parametrize(
    ("status", "content_type", "body", "words"),
    [
        (200, "application/json", DEEP, "Malformed result"),
        (200, NDJSON, b'{"event": "result", "result": ' + DEEP + b"}\n", "Malformed line"),
        (500, "application/json", DEEP, "AI service answered 500"),
    ],
    ids=["result", "ndjson line", "error answer"],
)
async def test_an_answer_nested_too_deeply_is_the_services_error_in_words(
    settings: Settings, status: int, content_type: str, body: bytes, words: str
) -> None:
    """An answer nested deeper than Python can read is the service's fault, said as such (it
    was a RecursionError, classified with the words "Unexpected error")."""

    async with serving(status, [body], {"Content-Type": content_type}) as url:
        client = AIClient(settings.model_copy(update={"ai_service_url": url}))
        try:
            with pytest.raises(AIServiceError, match=words):
                await client.analyze(_audio(), "audio/wav", {}, "t1:1", _ignore)
        finally:
            await client.aclose()


@pytest.mark.parametrize(
    ("error", "error_class"),
    [
        (FileNotFoundError(2, "No such file or directory"), ErrorClass.VALIDATION),
        (StorageUnavailable("the object store is down"), ErrorClass.RESOURCE),
    ],
    ids=["missing", "storage down"],
)
@pytest.mark.parametrize("sent", [0, 1], ids=["before the first chunk", "after one chunk"])
async def test_a_recording_whose_read_fails_while_it_is_sent_is_not_the_services_error(
    settings: Settings, error: Exception, error_class: ErrorClass, sent: int
) -> None:
    """aiohttp wraps an error of the request body into its own connection error (a missing
    recording, an OSError, came out as ClientOSError): the attempt took it for the service
    unreachable, retried it as `network` and counted it on the service's circuit breaker.
    The recording's own error comes out, and is classified as such."""

    async def recording() -> AsyncIterator[bytes]:
        for _ in range(sent):
            yield b"RIFF" + bytes(64)
        raise error

    result = b'{"event": "result", "result": {"overall_score": 1.0}}\n'
    async with serving(200, [result], {"Content-Type": NDJSON}) as url:
        client = AIClient(settings.model_copy(update={"ai_service_url": url}))
        try:
            with pytest.raises(type(error)) as raised:
                await client.analyze(recording(), "audio/wav", {}, "t1:1", _ignore)
        finally:
            await client.aclose()
    assert raised.value is error
    assert classify(raised.value).error_class is error_class


async def test_a_recording_whose_read_fails_once_the_answer_has_begun_is_its_own_error(
    settings: Settings,
) -> None:
    """A service may answer (its head, a progress line) while it still receives the
    recording. A read of the recording failing then was seen by no one: aiohttp marks the
    connection broken but neither wakes the answer's reader nor keeps its read timeout, so the
    call waited for the service until the attempt's deadline, and came out as the service's
    timeout. The recording's own error comes out at once."""
    progress = b'{"event": "progress", "progress": 10}\n'
    result = b'{"event": "result", "result": {"overall_score": 1.0, "detailed_analysis": {}}}\n'
    answered = asyncio.Event()
    error = StorageUnavailable("the object store is down")

    async def recording() -> AsyncIterator[bytes]:
        yield b"RIFF" + bytes(64)
        await answered.wait()  # the service's progress line has come
        raise error

    async def seen(line: ProgressLine) -> None:
        answered.set()

    async with serving(200, [result], {"Content-Type": NDJSON}, early=[progress]) as url:
        client = AIClient(settings.model_copy(update={"ai_service_url": url}))
        try:
            with pytest.raises(StorageUnavailable) as raised:
                async with asyncio.timeout(10):  # the failure came out at the deadline only
                    await client.analyze(recording(), "audio/wav", {}, "t1:1", seen)
        finally:
            await client.aclose()
    assert raised.value is error
    assert classify(raised.value).error_class is ErrorClass.RESOURCE
