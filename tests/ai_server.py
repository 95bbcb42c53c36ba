"""A real HTTP server that gives one scripted answer to every request, in the chunks given (the
AI client's answers as a service might send them: odd statuses, charsets, endless bodies, an
end that comes after the last line)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.test_utils import RawTestServer


@contextlib.asynccontextmanager
async def serving(
    status: int,
    chunks: Iterable[bytes],
    headers: Mapping[str, str],
    endless: bytes | None = None,
    *,
    early: Iterable[bytes] = (),
    end_after: float = 0.0,
    peers: list[Any] | None = None,
) -> AsyncIterator[str]:
    """A real HTTP server answering every request with `status`, `headers` and `chunks`,
    then `endless` over and over until the client goes; yields its base URL. `early`: the
    answer's head and these chunks are sent before the request's body is read (a service
    that answers while it still receives), `chunks` after it. `end_after`
    (seconds): the answer's end (its chunked terminator) comes this long after its last
    chunk, as from a service that still works after its last line. `peers`: where each
    request's client address (host, port) is appended, one port per TCP connection."""

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        if peers is not None:
            peers.append(
                request.transport.get_extra_info("peername") if request.transport else None
            )
        response = web.StreamResponse(status=status, headers=headers)
        if early:
            await response.prepare(request)
            for chunk in early:
                await response.write(chunk)
        await request.read()
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        while endless is not None:  # the answer never ends (write fails once the client goes)
            await response.write(endless)
        if end_after:
            await asyncio.sleep(end_after)  # the service's pace, not a synchronisation
        await response.write_eof()
        return response

    server = RawTestServer(answer)
    await server.start_server()
    try:
        yield str(server.make_url(""))
    finally:
        await server.close()
