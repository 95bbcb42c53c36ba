"""A client reconnecting after the end (EventSource always does): it has every final state,
so the answer is an end at once (204 tells EventSource to stop reconnecting), never a wait for
the heartbeat and a second copy of the terminal event. The heartbeat is set to 60 s here: a
wait for it shows as a timeout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from app.analysis.progress import session_topic, stream_key
from tests.analysis.conftest import upload_recording
from tests.conftest import ApiUser
from tests.events.conftest import SseEvent, StartApi, read_events
from tests.servers import UvicornThread

WITHIN = 5.0  # far below the heartbeat


@pytest.fixture
def slow_heartbeat_api(start_live_api: StartApi) -> UvicornThread:
    return start_live_api(sse_heartbeat_seconds=60.0)


@pytest.fixture
async def http(slow_heartbeat_api: UvicornThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=slow_heartbeat_api.url, timeout=30) as client:
        yield client


async def _session_of_two(http: httpx.AsyncClient, user: ApiUser) -> tuple[str, list[str]]:
    session_id, _, _ = await upload_recording(http, user)
    await upload_recording(http, user, session_id=session_id)
    submitted = await http.post(
        "/api/v1/tasks/analysis/submit",
        json={"practice_session_id": session_id},
        headers=user.headers,
    )
    assert submitted.status_code == 202, submitted.text
    return session_id, [task["task_id"] for task in submitted.json()["tasks"]]


async def _cancel(http: httpx.AsyncClient, user: ApiUser, task_id: str) -> None:
    response = await http.delete(f"/api/v1/tasks/analysis/{task_id}", headers=user.headers)
    assert response.status_code == 202 and response.json()["status"] == "cancelled"


async def _stream(
    http: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> tuple[int, list[SseEvent]]:
    """The whole stream: its status and events, failing if it lasts longer than WITHIN."""
    async with asyncio.timeout(WITHIN):
        async with http.stream("GET", url, headers=headers) as response:
            events = await read_events(response.aiter_lines())
    return response.status_code, events


async def test_a_reconnect_after_the_terminal_event_ends_at_once(
    http: httpx.AsyncClient, alice: ApiUser
) -> None:
    _, [task_id, _] = await _session_of_two(http, alice)
    await _cancel(http, alice, task_id)
    url = f"/api/v1/tasks/analysis/{task_id}/events"
    status, events = await _stream(http, url, alice.headers)
    assert status == 200 and [e.json()["status"] for e in events] == ["cancelled"]

    for _ in range(3):  # EventSource comes back with the terminal event's id, every time
        headers = alice.headers | {"Last-Event-ID": events[-1].id}
        assert await _stream(http, url, headers) == (204, [])


async def test_a_session_reconnect_after_every_task_ended_ends_at_once(
    http: httpx.AsyncClient, alice: ApiUser
) -> None:
    session_id, task_ids = await _session_of_two(http, alice)
    for task_id in task_ids:
        await _cancel(http, alice, task_id)
    url = f"/api/v1/tasks/analysis/session/{session_id}/events"
    status, events = await _stream(http, url, alice.headers)
    assert status == 200
    assert {e.json()["task_id"]: e.json()["status"] for e in events} == dict.fromkeys(
        task_ids, "cancelled"
    )

    headers = alice.headers | {"Last-Event-ID": events[-1].id}
    assert await _stream(http, url, headers) == (204, [])


async def test_a_session_reconnect_gets_only_what_is_new_and_ends_with_the_last_task(
    http: httpx.AsyncClient, alice: ApiUser
) -> None:
    """One task ended and seen, one still pending: the stream stays open for the second and
    never sends the first again."""
    session_id, [first, second] = await _session_of_two(http, alice)
    await _cancel(http, alice, first)
    url = f"/api/v1/tasks/analysis/session/{session_id}/events"
    async with asyncio.timeout(WITHIN), http.stream("GET", url, headers=alice.headers) as r:
        seen = await read_events(r.aiter_lines(), limit=2)
    assert {e.json()["task_id"]: e.json()["status"] for e in seen} == {
        first: "cancelled",
        second: "pending",
    }

    headers = alice.headers | {"Last-Event-ID": seen[-1].id}
    async with asyncio.timeout(WITHIN), http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        await _cancel(http, alice, second)
        rest = await read_events(response.aiter_lines())
    assert [(e.json()["task_id"], e.json()["status"]) for e in rest] == [(second, "cancelled")]


async def test_a_session_reconnect_does_not_end_while_a_task_without_news_runs(
    http: httpx.AsyncClient, alice: ApiUser
) -> None:
    """The client comes back with both tasks pending; the second ends first. The first had no
    entry after the client's id, yet the stream must wait for it too."""
    session_id, [first, second] = await _session_of_two(http, alice)
    url = f"/api/v1/tasks/analysis/session/{session_id}/events"
    async with asyncio.timeout(WITHIN), http.stream("GET", url, headers=alice.headers) as r:
        seen = await read_events(r.aiter_lines(), limit=2)
    assert {e.json()["status"] for e in seen} == {"pending"}

    headers = alice.headers | {"Last-Event-ID": seen[-1].id}
    async with asyncio.timeout(WITHIN), http.stream("GET", url, headers=headers) as response:
        lines = response.aiter_lines()
        await _cancel(http, alice, second)
        received = await read_events(lines, limit=1)
        await _cancel(http, alice, first)
        received += await read_events(lines)
    assert [(e.json()["task_id"], e.json()["status"]) for e in received] == [
        (second, "cancelled"),
        (first, "cancelled"),
    ]


async def test_a_task_the_session_stream_never_showed_is_sent_at_once(
    http: httpx.AsyncClient, alice: ApiUser, redis: Redis
) -> None:
    """The client saw the first task end; the second's publish was lost (Redis was down when
    it was submitted). Its state comes from PostgreSQL at once, and the stream stays open."""
    session_id, [first, second] = await _session_of_two(http, alice)
    await _cancel(http, alice, first)
    key = stream_key(session_topic(session_id))
    for entry_id, fields in await redis.xrange(key):
        if json.loads(fields[b"doc"])["task_id"] == second:
            await redis.xdel(key, entry_id)  # as if never published
    [(last_id, _)] = await redis.xrevrange(key, count=1)  # the first task's `cancelled`

    url = f"/api/v1/tasks/analysis/session/{session_id}/events"
    headers = alice.headers | {"Last-Event-ID": last_id.decode()}
    async with asyncio.timeout(WITHIN), http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        [now] = await read_events(lines, limit=1)
        assert (now.json()["task_id"], now.json()["status"]) == (second, "pending")
        await _cancel(http, alice, second)
        rest = await read_events(lines)
    assert [(e.json()["task_id"], e.json()["status"]) for e in rest] == [(second, "cancelled")]


async def test_a_websocket_resuming_after_the_terminal_event_closes_at_once(
    slow_heartbeat_api: UvicornThread, http: httpx.AsyncClient, alice: ApiUser
) -> None:
    _, [task_id, _] = await _session_of_two(http, alice)
    await _cancel(http, alice, task_id)
    _, [terminal] = await _stream(http, f"/api/v1/tasks/analysis/{task_id}/events", alice.headers)
    token = await http.post(f"/api/v1/tasks/analysis/{task_id}/stream-token", headers=alice.headers)
    ws_url = slow_heartbeat_api.url.replace("http", "ws") + f"/api/v1/tasks/ws/task/{task_id}"
    query = f"?stream_token={token.json()['stream_token']}&last_event_id={terminal.id}"
    async with asyncio.timeout(WITHIN), websockets.connect(ws_url + query) as ws:
        messages = [message async for message in ws]
    assert messages == []
    assert ws.close_code == 1000
