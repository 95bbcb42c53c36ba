"""Who may open a stream, with which token, how many, for how long."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import httpx
import jwt
import pytest
import websockets

from app.settings import Settings
from tests.analysis.conftest import StartWorker, new_task, upload_recording, wait_for
from tests.conftest import ApiUser
from tests.events.conftest import StartApi, read_events
from tests.fake_ai import FakeAI, ok
from tests.servers import UvicornThread


async def _stream_token(http: httpx.AsyncClient, user: ApiUser, task_id: str) -> str:
    response = await http.post(
        f"/api/v1/tasks/analysis/{task_id}/stream-token", headers=user.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 60
    return str(response.json()["stream_token"])


async def test_stream_token_opens_the_stream_and_never_reaches_the_log(
    http: httpx.AsyncClient, alice: ApiUser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    task_id = await new_task(http, alice)
    token = await _stream_token(http, alice, task_id)
    url = f"/api/v1/tasks/analysis/{task_id}/events?stream_token={token}"
    async with http.stream("GET", url) as response:
        assert response.status_code == 200
        [event] = await read_events(response.aiter_lines(), limit=1)
    assert event.json()["task_id"] == task_id
    access = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/events?[scrubbed]" in line for line in access), access
    server_log = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert server_log and not any(token in line for line in server_log)


async def test_who_may_not_open_a_stream(
    http: httpx.AsyncClient, alice: ApiUser, bob: ApiUser, settings: Settings
) -> None:
    task_id = await new_task(http, alice)
    other_task = await new_task(http, alice)
    events = f"/api/v1/tasks/analysis/{task_id}/events"

    async def status_of(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        response = await http.get(url, headers=headers)
        return response.status_code, response.json()["error"]["code"]

    # Bob with Alice's task id: exactly like an unknown task.
    assert await status_of(events, bob.headers) == (404, "not_found")
    bob_token = await http.post(
        f"/api/v1/tasks/analysis/{task_id}/stream-token", headers=bob.headers
    )
    assert bob_token.status_code == 404
    # A token for another task.
    other = await _stream_token(http, alice, other_task)
    assert await status_of(f"{events}?stream_token={other}") == (401, "unauthorized")
    # An expired token.
    expired = jwt.encode(
        {"sub": str(alice.user_id), "typ": "stream", "scope": f"task:{task_id}",
         "exp": int(time.time()) - 5},
        settings.jwt_secret or "",
        algorithm="HS256",
    )  # fmt: skip
    assert await status_of(f"{events}?stream_token={expired}") == (401, "unauthorized")
    # The long-lived access token in the URL, under any name.
    assert await status_of(f"{events}?stream_token={alice.token}") == (401, "unauthorized")
    assert await status_of(f"{events}?access_token={alice.token}") == (401, "unauthorized")
    # No credentials at all.
    assert await status_of(events) == (401, "unauthorized")
    # Another method on a stream's path: the API's own 405, in its error shape.
    post = await http.post(events, headers=alice.headers)
    assert (post.status_code, post.json()["error"]["code"]) == (405, "method_not_allowed")


async def test_per_user_limit_on_open_streams(
    start_live_api: StartApi, alice: ApiUser, bob: ApiUser
) -> None:
    server = start_live_api(max_streams_per_user=2)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        open_before = await _open_sse_streams(http)
        task_id = await new_task(http, alice)
        url = f"/api/v1/tasks/analysis/{task_id}/events"
        async with (
            http.stream("GET", url, headers=alice.headers) as first,
            http.stream("GET", url, headers=alice.headers) as second,
        ):
            lines = [first.aiter_lines(), second.aiter_lines()]
            for stream in lines:
                await read_events(stream, limit=1)
            third = await http.get(url, headers=alice.headers)
            assert third.status_code == 429
            assert third.json()["error"]["code"] == "too_many_streams"
            assert await _open_sse_streams(http) == open_before + 2

        # Streams closed: the slots come back.
        async def reopened() -> bool:
            async with http.stream("GET", url, headers=alice.headers) as again:
                return again.status_code == 200

        await wait_for(reopened, within=10)


async def _open_sse_streams(http: httpx.AsyncClient) -> float:
    """The gauge (process-wide: other tests' servers in this process count too)."""
    metrics = (await http.get("/metrics/")).text
    found = re.search(r'vocalborn_stream_connections\{transport="sse"\} ([0-9.]+)', metrics)
    return float(found.group(1)) if found else 0.0


async def test_maximum_connection_lifetime_ends_with_reconnect(
    start_live_api: StartApi, alice: ApiUser
) -> None:
    server = start_live_api(sse_max_connection_seconds=1.0)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        task_id = await new_task(http, alice)
        url = f"/api/v1/tasks/analysis/{task_id}/events"
        async with http.stream("GET", url, headers=alice.headers) as response:
            events = await asyncio.wait_for(read_events(response.aiter_lines()), timeout=10)
    assert [e.event for e in events] == ["status", "reconnect"]


async def test_websocket_sends_the_same_documents(
    live_api: UvicornThread,
    http: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    fake_ai.reset(default=ok(latency=0.5))
    task_id = await new_task(http, alice)
    token = await _stream_token(http, alice, task_id)
    ws_url = live_api.url.replace("http", "ws") + f"/api/v1/tasks/ws/task/{task_id}"
    documents = []
    async with websockets.connect(f"{ws_url}?stream_token={token}") as ws:
        await start_worker()
        async for message in ws:
            documents.append(json.loads(message))
    assert documents[0]["status"] == "pending" and documents[-1]["status"] == "success"
    progress = [d["progress"] for d in documents]
    assert progress == sorted(progress)
    status = (
        await http.get(f"/api/v1/tasks/analysis/{task_id}/status", headers=alice.headers)
    ).json()
    assert documents[-1] | {"queue_position": None} == status | {"queue_position": None}

    async with websockets.connect(f"{ws_url}?access_token={alice.token}") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    handshakes = [r.getMessage() for r in caplog.records if "WebSocket" in r.getMessage()]
    assert handshakes and all("?[scrubbed]" in line for line in handshakes), handshakes
    server_log = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert not any(token in line or alice.token in line for line in server_log)


async def test_session_stream_carries_every_task(
    http: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    fake_ai.reset(default=ok(latency=0.3))
    session_id, _, _ = await upload_recording(http, alice)
    await upload_recording(http, alice, session_id=session_id)
    token = await http.post(
        f"/api/v1/tasks/analysis/session/{session_id}/stream-token", headers=alice.headers
    )
    url = token.json()["events_url"]
    async with http.stream("GET", url) as response:
        lines = response.aiter_lines()
        submitted = await http.post(
            "/api/v1/tasks/analysis/submit",
            json={"practice_session_id": session_id},
            headers=alice.headers,
        )
        task_ids = {t["task_id"] for t in submitted.json()["tasks"]}
        await start_worker()
        events = await asyncio.wait_for(read_events(lines), timeout=30)
    final = {}
    for event in events:
        final[event.json()["task_id"]] = event.json()["status"]
    assert final == dict.fromkeys(task_ids, "success")
    ids = [tuple(map(int, e.id.split("-"))) for e in events]
    assert ids == sorted(ids)
