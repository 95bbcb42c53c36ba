"""A real HTTP server that gives one scripted answer to every request, in the chunks given (the
AI client's answers as a service might send them: odd statuses, charsets, endless bodies)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping

from aiohttp import web
from aiohttp.test_utils import RawTestServer


@contextlib.asynccontextmanager
async def serving(
    status: int,
    chunks: Iterable[bytes],
    headers: Mapping[str, str],
    endless: bytes | None = None,
) -> AsyncIterator[str]:
    """A real HTTP server answering every request with `status`, `headers` and `chunks`,
    then `endless` over and over until the client goes; yields its base URL."""

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        while endless is not None:  # the answer never ends (write fails once the client goes)
            await response.write(endless)
        await response.write_eof()
        return response

    server = RawTestServer(answer)
    await server.start_server()
    try:
        yield str(server.make_url(""))
    finally:
        await server.close()
