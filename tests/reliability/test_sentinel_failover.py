"""Every Redis connection through Sentinel, and a failover under load: a real Sentinel
deployment (tests/sentinel_cluster.py: master, replica, three Sentinels, with a Sentinel
password and an ACL user on Redis), the API in uvicorn and a worker, both configured for it
and never told the master's address. A task completes; a progress stream is opened; the master
is SIGKILLed while a task is being analysed; once the Sentinels have promoted the replica a
new task completes, the task in flight ends, and the stream opened before the failover
receives its events to the end."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import MasterNotFoundError

from app.main import create_app
from app.redis_client import RedisTarget, connect
from app.settings import Settings
from tests.analysis.conftest import StartWorker, new_task, wait_for, wait_for_status
from tests.conftest import ApiUser
from tests.events.conftest import LIVE, read_events
from tests.fake_ai import FakeAI, ok
from tests.reliability.conftest import ACL_USER
from tests.sentinel_cluster import SentinelCluster
from tests.servers import UvicornThread

IN_FLIGHT_SECONDS = 3.0  # the analysis the master dies under (below FAST's AI deadline, 4 s)


async def _clients_on(cluster: SentinelCluster, server: str) -> list[dict[str, str]]:
    """CLIENT LIST of one server of the cluster."""
    client = Redis(port=cluster.port_of(server), password=cluster.redis_password)
    try:
        return list(await client.client_list())
    finally:
        await client.aclose()


async def test_tasks_and_streams_go_on_through_a_sentinel_failover(
    sentinel_cluster: SentinelCluster,
    worker_settings: Settings,
    start_worker: StartWorker,
    fake_ai: FakeAI,
    alice: ApiUser,
) -> None:
    overrides = sentinel_cluster.settings_overrides() | LIVE
    settings = worker_settings.model_copy(update=overrides)
    api = UvicornThread(create_app(settings), log_config=None).start()
    try:
        await start_worker(**overrides)
        async with httpx.AsyncClient(base_url=api.url, timeout=30.0) as http:
            first = await new_task(http, alice)
            await wait_for_status(http, alice, first, {"success"})
            hub = f"vocalborn-hub-{os.getpid()}"
            before = await _clients_on(sentinel_cluster, "master")
            assert {c["user"] for c in before if c["name"] == hub} == {ACL_USER}

            fake_ai.then(ok(latency=IN_FLIGHT_SECONDS))  # the task the failover interrupts
            in_flight = await new_task(http, alice)
            url = f"/api/v1/tasks/analysis/{in_flight}/events"
            async with http.stream("GET", url, headers=alice.headers) as response:
                lines = response.aiter_lines()
                opening = await read_events(lines, limit=1)
                if opening[0].json()["status"] != "processing":
                    opening += await _until(lines, "processing")

                old = await asyncio.to_thread(sentinel_cluster.kill_master)
                killed = time.monotonic()
                new = await asyncio.to_thread(sentinel_cluster.wait_for_failover, old)
                promoted = time.monotonic()
                after = await new_task(http, alice)  # submitted after the failover
                await wait_for_status(http, alice, after, {"success"}, within=60)
                completed = time.monotonic()

                rest = await asyncio.wait_for(read_events(lines), timeout=60)
        statuses = [event.json()["status"] for event in rest]
        assert statuses and statuses[-1] == "success", statuses  # to its end

        async def hub_moved() -> bool:  # the hub's pub/sub reconnected to the new master
            clients = await _clients_on(sentinel_cluster, new)
            return any(c["name"] == hub and c["user"] == ACL_USER for c in clients)

        await wait_for(hub_moved, within=10)
    finally:
        api.stop()
    print(
        f"FIGURE sentinel-failover: master SIGKILLed -> replica promoted {promoted - killed:.2f} s;"
        f" promoted -> first task submitted after it completed {completed - promoted:.2f} s"
        f" (down-after 1000 ms, failover-timeout 3000 ms)"
    )


async def _until(lines: object, status: str) -> list[object]:
    events = []
    while True:
        [event] = await asyncio.wait_for(read_events(lines, limit=1), timeout=20)  # type: ignore[arg-type]
        events.append(event)
        if event.json()["status"] == status:
            return events


async def test_the_factory_reaches_the_master_through_sentinel_with_passwords(
    sentinel_cluster: SentinelCluster, settings: Settings
) -> None:
    """Both passwords are used (a wrong Sentinel password fails), and the connection is the
    ACL user's, to the master (writes succeed)."""
    target = RedisTarget.of(settings.model_copy(update=sentinel_cluster.settings_overrides()))
    client = connect(target, client_name="factory-test")
    try:
        await client.set("written", "through sentinel")
        assert await client.acl_whoami() == ACL_USER
        assert await client.get("written") == b"through sentinel"
    finally:
        await client.aclose()
    wrong = RedisTarget.of(
        settings.model_copy(
            update=sentinel_cluster.settings_overrides() | {"redis_sentinel_password": "wrong"}
        )
    )
    refused = connect(wrong)
    try:
        with pytest.raises(MasterNotFoundError, match=r"(?i)auth|password"):
            await refused.ping()
    finally:
        await refused.aclose()
