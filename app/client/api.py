"""The API calls the command-line client makes, over httpx; errors as `ApiError` with the
project's one error shape (`{"error": {"code", "message"}}`)."""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

TERMINAL = frozenset({"success", "failure", "cancelled"})
Doc = dict[str, Any]


class ApiError(Exception):
    """An error answer of the API (or none at all: `status` 0 when it could not be reached)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        code, message = "error", response.reason_phrase or f"HTTP {response.status_code}"
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = str(body["error"].get("code", code))
            message = str(body["error"].get("message", message))
        return cls(response.status_code, code, message)


# How long an idle connection to the API is reused at most.
KEEPALIVE_SECONDS = 2.0


class Api:
    """One client per command: `async with Api(url, token) as api: ...`."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            # Below the API's idle timeout (uvicorn's 5 s, as httpx's own default): a command
            # that polls never sends on a connection the API is closing at that moment.
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, "unreachable", f"cannot reach {self.base_url}: {exc!r}") from exc
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response.json()

    async def create_session(self, title: str | None) -> Doc:
        doc: Doc = await self.call("POST", "/api/v1/practice/sessions", json={"title": title})
        return doc

    async def session(self, session_id: str) -> Doc:
        doc: Doc = await self.call("GET", f"/api/v1/practice/sessions/{session_id}")
        return doc

    async def upload(self, session_id: str, path: Path) -> Doc:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as audio:
            doc: Doc = await self.call(
                "POST",
                f"/api/v1/practice/sessions/{session_id}/records",
                files={"audio": (path.name, audio, content_type)},
            )
        return doc

    async def submit(self, record_id: str, parameters: Doc, *, fresh: bool = False) -> Doc:
        """The submitted task; `fresh`: analyse again even when the result cache has it."""
        body = {"practice_record_id": record_id, "parameters": parameters, "fresh": fresh}
        doc: Doc = await self.call("POST", "/api/v1/tasks/analysis/submit", json=body)
        return doc

    async def status(self, task_id: str) -> Doc:
        doc: Doc = await self.call("GET", f"/api/v1/tasks/analysis/{task_id}/status")
        return doc

    async def session_status(self, session_id: str) -> Doc:
        doc: Doc = await self.call("GET", f"/api/v1/tasks/analysis/session/{session_id}/status")
        return doc

    async def result(self, task_id: str) -> Doc:
        doc: Doc = await self.call("GET", f"/api/v1/tasks/analysis/{task_id}/result")
        return doc

    async def cancel(self, task_id: str) -> Doc:
        doc: Doc = await self.call("DELETE", f"/api/v1/tasks/analysis/{task_id}")
        return doc
