"""The web page at `/`: static files in this package (no build step), served by the API.

The page gets its access token from the URL fragment of the link `vocalborn up` prints (a
fragment never reaches a server, so no log), keeps it in memory only and removes it from the
address bar. It records from the microphone and encodes WAV itself (the AI service does not
accept the WebM/Opus that browsers record), follows progress over EventSource with a stream
token, and draws the result."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def index() -> Response:
    return FileResponse(STATIC / "index.html", headers=HEADERS)


def install(app: FastAPI) -> None:
    """`GET /` (the page) and its files under `/web/`."""
    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.mount("/web", StaticFiles(directory=STATIC), name="web")
