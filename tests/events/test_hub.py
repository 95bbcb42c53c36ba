"""The hub's per-client queue: bounded, and the newest state always survives."""

from __future__ import annotations

import json

from app.analysis.hub import Event, Listener


def _event(n: int) -> Event:
    document = {"task_id": "t", "status": "processing", "updated_at": f"2026-01-01T00:00:{n:02d}Z"}
    return Event.build("task:t", f"{1000 + n}-0", json.dumps(document).encode())


async def test_a_slow_client_loses_intermediate_events_but_never_the_latest() -> None:
    listener = Listener(size=4)
    for n in range(10):  # the client is not reading
        listener.put(_event(n))
    listener.tick()  # ends the drain below: next() answers None for a tick
    received = []
    while (event := await listener.next()) is not None:
        received.append(event.id)
    assert received == ["1006-0", "1007-0", "1008-0", "1009-0"]
    assert listener.dropped == 6
    assert listener.quiet is False  # events came since the previous tick


async def test_a_tick_without_events_is_quiet() -> None:
    listener = Listener(size=4)
    listener.tick()
    assert await listener.next() is None and listener.quiet is True


async def test_one_encoding_shared_by_every_client() -> None:
    event = _event(1)
    first, second = Listener(size=2), Listener(size=2)
    first.put(event)
    second.put(event)
    a, b = await first.next(), await second.next()
    assert a is b and a is not None
    assert a.frame == b"event: status\r\nid: 1001-0\r\ndata: " + a.doc + b"\r\n\r\n"


def _task_event(task: str, n: int) -> Event:
    document = {"task_id": task, "status": "processing", "updated_at": f"2026-01-01T00:00:{n:02d}Z"}
    return Event.build("session:s", f"{1000 + n}-0", json.dumps(document).encode())


async def test_a_full_session_queue_drops_superseded_states_first() -> None:
    listener = Listener(size=3)
    listener.put(_task_event("a", 1))  # task a's last state
    for n in range(2, 6):  # then task b keeps moving
        listener.put(_task_event("b", n))
    listener.tick()
    kept = []
    while (event := await listener.next()) is not None:
        kept.append((event.task_id, event.id))
    assert kept == [("a", "1001-0"), ("b", "1004-0"), ("b", "1005-0")]
