"""aiohttp client for the AI analysis service: the recording is streamed as the request body and
the NDJSON answer is read line by line. Errors come out as `AnalysisError` subclasses.

aiohttp's own API, not httpx's: httpx's models around aiohttp's connections (the URL built and
merged with its query, cookies, the stream wrappers) cost as much CPU as aiohttp itself (0.58
against 0.24 ms per call, 64 kB streamed, five NDJSON lines read, 50 at once against
bench/fake_ai.py), and httpx's own transport (httpcore, h11, anyio) 2.0-2.4 ms, its pool
scanning every connection it held at each request and response end. The test seam is
aiohttp's: a connector (`connector`) and, for answers, a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import httpx
import yarl
from pydantic import ValidationError

from app.ai_client.errors import (
    AIServiceError,
    AnalysisError,
    AnalysisTimeout,
    NetworkError,
    error_for_status,
)
from app.ai_client.providers import AIProvider
from app.ai_client.wire import AIResult, ErrorLine, Line, ProgressLine, ResultLine
from app.settings import Settings
from app.text import storable_json, storable_words

NDJSON = "application/x-ndjson"
ProgressCallback = Callable[[ProgressLine], Awaitable[None]]
Connector = Callable[[], aiohttp.BaseConnector]
QUERY_KEYS = ("language", "target_text", "analysis_type", "include_suggestions", "model_version")
# The size of the answer's chunks handed to the line reader (bytes): what has come, up to this.
READ_CHUNK_BYTES = 64 * 1024


class AIClient:
    def __init__(
        self,
        settings: Settings,
        provider: AIProvider | None = None,
        connector: Connector | None = None,
    ) -> None:
        """A client of `provider` (its URL and key), else of AI_SERVICE_URL and
        AI_SERVICE_API_KEY. `connector`: makes the aiohttp connector of the client's session
        at its first call (a test seam: a connector that fails on cue); by default
        `ai_connector`. Raises ValueError for a proxy the environment names that aiohttp
        cannot use (`environment_proxy`), and for a URL naming credentials (sent as Basic
        auth) with a key (a bearer key): both would be the Authorization header, which
        aiohttp refused at every call (httpx let the URL's silently replace the key)."""
        url = provider.url if provider is not None else settings.ai_service_url
        key = provider.key if provider is not None else settings.ai_service_api_key
        headers = {"Accept": NDJSON}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        endpoint = yarl.URL(url.rstrip("/") + "/v1/analyze")
        if endpoint.user is not None or endpoint.password is not None:
            if key:
                raise ValueError(
                    "The AI service URL names credentials and a bearer key is set for it: one "
                    f"or the other (URL {endpoint.with_user(None)})"
                )
            # Sent as httpx did (UTF-8); aiohttp's own reading of them is deprecated.
            headers["Authorization"] = aiohttp.encode_basic_auth(
                endpoint.user or "", endpoint.password or ""
            )
            endpoint = endpoint.with_user(None)
        self._endpoint = endpoint
        self._limit = settings.ai_max_answer_bytes
        self._connector = connector or (lambda: ai_connector(settings))
        self._session: aiohttp.ClientSession | None = None
        # As httpx's Timeout(deadline, connect=...) was: a connection made within the connect
        # timeout, taken from the pool or made within the deadline, each read within it.
        self._timeout = aiohttp.ClientTimeout(
            sock_connect=settings.ai_connect_timeout_seconds,
            sock_read=settings.ai_deadline_seconds,
            connect=settings.ai_deadline_seconds,
        )
        proxy = environment_proxy(url)
        self._proxy: dict[str, Any] = {}
        if proxy is not None:
            # The proxy's own headers, its credentials among them (as httpx sent them: UTF-8;
            # aiohttp's proxy_auth is deprecated): on the CONNECT that opens a tunnel to an
            # https service, else on the request itself, which goes to the proxy.
            to_proxy = dict(proxy.headers)
            if proxy.auth:
                to_proxy["Proxy-Authorization"] = aiohttp.encode_basic_auth(*proxy.auth)
            self._proxy["proxy"] = str(proxy.url)
            if endpoint.scheme == "https":
                self._proxy["proxy_headers"] = to_proxy or None
            else:
                headers.update(to_proxy)
        self._headers = headers

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _open(self) -> aiohttp.ClientSession:
        """The client's session, made at the first call (it needs the running loop); no
        cookies kept between calls."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=self._connector(), cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def analyze(
        self,
        audio: AsyncIterable[bytes],
        content_type: str,
        parameters: Mapping[str, Any],
        request_id: str,
        on_progress: ProgressCallback,
        deadline: float | None = None,
        on_result: Callable[[], None] | None = None,
    ) -> AIResult:
        """The AI service's result for the recording `audio` streams (`content_type`), its
        progress lines handed to `on_progress` as they come. `deadline` (the event loop's
        time): when the caller's own timeout ends, so that reading past the result line never
        runs into it. `on_result`: called as soon as the result line has come, before the
        rest of the answer is read (the caller may drop progress it has not passed on yet).
        Raises an `AnalysisError` subclass: the service's error by its status,
        a timeout or a network error."""
        headers = {**self._headers, "Content-Type": content_type, "X-Request-ID": request_id}
        body = _Body(audio)
        try:
            async with self._open().post(
                self._endpoint,
                data=body,
                params=_query(parameters),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                **self._proxy,
            ) as response:
                body.answered(response)
                return await _read(response, on_progress, deadline, self._limit, on_result)
        except aiohttp.ClientError as exc:
            if body.error is None:
                raise _transport_error(exc) from exc
        # The recording's own read failed, not the service: its error as it was raised
        # (raised here, outside the handler, it does not chain aiohttp's wrapper).
        raise body.error


class _Body:
    """The request body: the recording's chunks as `audio` yields them. aiohttp wraps an
    error raised while it writes them into its own connection error (ClientOSError for an
    OSError, such as a recording missing from storage): the error is kept here, so that the
    recording's fault is not taken for the service's (a retry as a network error, counted
    on the circuit breaker). Once the service's answer has begun (a service may answer while
    it still receives), aiohttp's error reaches no one (nor does its read timeout run on):
    the answer is then closed, so that its reader stops at once."""

    def __init__(self, audio: AsyncIterable[bytes]) -> None:
        self._audio = audio
        self.error: Exception | None = None
        self._response: aiohttp.ClientResponse | None = None

    def answered(self, response: aiohttp.ClientResponse) -> None:
        """The service's answer has begun: closed at once if the recording failed already,
        else when it does."""
        self._response = response
        if self.error is not None:
            response.close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._audio:
                yield chunk
        except Exception as exc:
            self.error = exc
            if self._response is not None:
                # Closed once aiohttp's writer, whose task this is, has ended (the close
                # cancels it).
                asyncio.get_running_loop().call_soon(self._response.close)
            raise


def ai_connector(settings: Settings) -> aiohttp.BaseConnector:
    """The AI client's connections: one per job the worker may run at once, all kept alive
    for AI_KEEPALIVE_SECONDS (httpx's default pool, 100 with 20 kept, capped the AI calls in
    flight at 100 whatever WORKER_MAX_JOBS said, and churned connections beyond 20); httpx's
    TLS context (certifi's roots). Not `trust_env`: the proxy is read once
    (`environment_proxy`), where aiohttp read the environment and looked for ~/.netrc in a
    thread at every request (0.35 of 0.88 ms of CPU per call, 50 calls at once against
    bench/fake_ai.py). Call it on the running loop."""
    return aiohttp.TCPConnector(
        limit=settings.worker_max_jobs,
        keepalive_timeout=settings.ai_keepalive_seconds,
        ssl=httpx.create_ssl_context(),
    )


def environment_proxy(url: str) -> httpx.Proxy | None:
    """The proxy the environment names for calls to `url`, as httpx reads it: `http_proxy`,
    `https_proxy` or `all_proxy` (by the URL's scheme; a value without a scheme is taken as
    http://), none when `no_proxy` covers the host (as urllib reads it, and aiohttp's
    trust_env did: `*`, host names and domain suffixes, ".example.com" covering example.com
    too; an entry with a port or a scheme, which httpx honours, covers nothing, nor does a
    CIDR range, as in httpx). Read once per client: a worker's
    environment does not change while it runs. Raises ValueError for a proxy URL httpx does
    not accept, or a SOCKS proxy (aiohttp speaks HTTP to any proxy it is given: a SOCKS one
    would fail every call): a configuration error, not a reason to call the service
    directly."""
    target = httpx.URL(url)
    if urllib.request.proxy_bypass(target.host):
        return None
    proxies = urllib.request.getproxies_environment()
    value = proxies.get(target.scheme) or proxies.get("all")
    if not value:
        return None
    proxy = httpx.Proxy(value if "://" in value else f"http://{value}")
    if proxy.url.scheme not in ("http", "https"):
        raise ValueError(f"{proxy.url.scheme} proxies are not supported (proxy {proxy.url})")
    return proxy


def _transport_error(exc: aiohttp.ClientError) -> AnalysisError:
    """What a failed exchange with the service is, by aiohttp's error: a connect timeout
    (no connection within AI_CONNECT_TIMEOUT_SECONDS, or none from the pool within the
    deadline), a read timeout, else an unreachable service (refused, reset, closed before
    its answer, not HTTP)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return NetworkError(f"AI service connect timeout: {exc!r}")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return AnalysisTimeout(f"AI service timed out: {exc!r}")
    return NetworkError(f"AI service unreachable: {exc!r}")


def _query(parameters: Mapping[str, Any]) -> dict[str, str]:
    query = {}
    for key in QUERY_KEYS:
        value = parameters.get(key)
        if value is None:
            continue
        query[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return query


async def _read(
    response: aiohttp.ClientResponse,
    on_progress: ProgressCallback,
    deadline: float | None,
    limit: int,
    on_result: Callable[[], None] | None = None,
) -> AIResult:
    """The result of an answer whose head has come, none of its parts read past `limit`
    bytes (AI_MAX_ANSWER_BYTES); `on_result` called when an NDJSON result line has come,
    before the rest is read."""
    chunks = response.content.iter_chunked(READ_CHUNK_BYTES)
    if response.status >= 400:
        body, whole = await _body(chunks, limit)
        raise error_for_status(
            response.status, _error_message(response, body, whole), _retry_after(response)
        )
    if not response.headers.get("content-type", "").startswith(NDJSON):
        body, whole = await _body(chunks, limit)
        if not whole:
            raise AIServiceError(f"The AI service's result is longer than {limit} bytes")
        return _parse_result(body)
    lines = _lines(chunks, limit)
    async for raw in lines:
        if not raw.strip():
            continue
        line = _parse_line(raw)
        if isinstance(line, ProgressLine):
            await on_progress(line)
        elif isinstance(line, ResultLine):
            if on_result is not None:
                on_result()
            await _read_to_the_end(lines, deadline)
            return line.result
        elif isinstance(line, ErrorLine):
            raise error_for_status(line.error.status, line.error.message, None)
    raise AIServiceError("AI service stream ended without a result")


async def _body(chunks: AsyncIterable[bytes], limit: int) -> tuple[bytes, bool]:
    """The answer's body (its `chunks`), read up to `limit` bytes, and whether that is all
    of it (the rest is left unread: closing the answer then closes its connection)."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), False
    return bytes(body), True


async def _lines(chunks: AsyncIterable[bytes], limit: int) -> AsyncIterator[str]:
    """The lines of an answer that comes in `chunks` (NDJSON: UTF-8, each ended by a newline,
    a carriage return before it dropped), with a bound: AIServiceError for a line longer
    than `limit` bytes, however the answer is cut into chunks, and once one runs past it
    without its end (httpx's `aiter_lines` held it all in memory; aiohttp's `readline`
    refuses lines past its buffer's size, whatever the bound). Only a newline ends a line
    (httpx's also split at a lone carriage return and at U+0085, U+2028 and U+2029, which a
    JSON string may hold as they are)."""
    pending = bytearray()
    async for chunk in chunks:
        start, searched = 0, len(pending)
        pending += chunk
        while (end := pending.find(b"\n", searched)) >= 0:
            if end - start > limit:
                break
            yield pending[start:end].rstrip(b"\r").decode(errors="replace")
            start = searched = end + 1
        del pending[:start]
        if len(pending) > limit:
            raise AIServiceError(f"A line of the AI service's answer is longer than {limit} bytes")
    if pending:
        yield pending.decode(errors="replace")


# How long the end of the stream is waited for once the result line has come; it stops this
# long before the caller's deadline at the latest.
DRAIN_SECONDS = 1.0
DRAIN_MARGIN_SECONDS = 0.05


async def _read_to_the_end(lines: AsyncIterator[str], deadline: float | None) -> None:
    """Read the answer to its end (what follows the result line: its chunked terminator, any
    line), so that its connection goes back to the pool: closed before its end, the
    connection is closed, and the next call opens a new one. A service that does not end
    its answer within DRAIN_SECONDS (or before the caller's `deadline`), or that sends a line
    past AI_MAX_ANSWER_BYTES after it, costs its connection, never the result."""
    until = asyncio.get_running_loop().time() + DRAIN_SECONDS
    if deadline is not None:
        until = min(until, deadline - DRAIN_MARGIN_SECONDS)
    with contextlib.suppress(TimeoutError, aiohttp.ClientError, AIServiceError):
        async with asyncio.timeout_at(until):
            async for _ in lines:
                pass


def _strict_json(raw: str | bytes) -> Any:
    """JSON without what PostgreSQL's jsonb would refuse later (raises ValueError): NaN or
    Infinity, a NUL character or an unpaired surrogate in a string (`storable_json`); and
    nested no deeper than Python's recursion limit lets it be read (about 1,000 levels)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not valid in a result")

    try:
        return storable_json(json.loads(raw, parse_constant=refuse))
    except RecursionError as exc:
        raise ValueError("nested too deeply to read") from exc


def _parse_line(raw: str) -> ProgressLine | ResultLine | ErrorLine:
    try:
        return Line.model_validate({"line": _strict_json(raw)}).line
    except (ValueError, ValidationError) as exc:
        raise AIServiceError(f"Malformed line from the AI service: {exc}") from exc


def _parse_result(body: bytes) -> AIResult:
    try:
        return AIResult.model_validate(_strict_json(body))
    except (ValueError, ValidationError) as exc:
        raise AIServiceError(f"Malformed result from the AI service: {exc}") from exc


def _error_message(response: aiohttp.ClientResponse, body: bytes, whole: bool) -> str:
    """The service's error answer (`body`, all of it when `whole`) in words, storable as the
    task's error_message (the service's own words may hold a NUL or an unpaired surrogate:
    `storable_words`)."""
    try:
        if not whole:
            raise ValueError("cut short")
        error = json.loads(body).get("error", {})
        message = f"{error.get('code', 'error')}: {error.get('message', '')}"
    except (ValueError, AttributeError, RecursionError):
        message = _first_words(body[:200], response.charset)
    return storable_words(f"AI service answered {response.status} ({message})")


def _first_words(body: bytes, encoding: str | None) -> str:
    """`body` decoded by the charset its answer names (`encoding`, from its Content-Type),
    UTF-8 when that is none or no text encoding ("base64": LookupError) or one that cannot
    replace what it cannot read ("idna", "undefined": UnicodeError): the service's words,
    never an error of their own (which would lose the answer's status)."""
    try:
        return body.decode(encoding or "utf-8", errors="replace")
    except (LookupError, UnicodeError):
        return body.decode("utf-8", errors="replace")


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


__all__ = ["AIClient", "AIResult", "AnalysisError", "ProgressLine"]
