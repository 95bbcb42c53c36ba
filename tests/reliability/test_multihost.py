"""Issue 12's multi-host acceptance: the API (`uvicorn app.main:create_app --factory`) and two
workers (`python -m worker`) run as separate processes, each in a working
directory of its own with a STORAGE_DIR of its own that stays empty: recordings live in S3 (a
real SeaweedFS), and every Redis connection goes through Sentinel (tests/sentinel_cluster.py:
one master, one replica, three Sentinels, real redis-server processes). The AI service is the
fake one (outside our system), in a thread of the test process.

A task completes; a second one is submitted, its SSE stream opened, and its analysis (slow AI)
is under way when the master is SIGKILLed; the Sentinels promote the replica; a task submitted
after the failover completes; the stream opened before the failover receives its task's
terminal event; PostgreSQL holds exactly the three tasks, all succeeded, one result each.
The figure: from the SIGKILL to the first task completion after it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.embedded import free_port
from app.settings import Settings
from app.users.models import Role
from tests.analysis.conftest import new_task, wait_for, wait_for_status
from tests.conftest import MakeUser, s3_settings
from tests.events.conftest import LIVE
from tests.fake_ai import FakeAI, ok
from tests.reliability.worker_process import ChildProcess, WorkerProcess, worker_env
from tests.seaweed import EmbeddedSeaweed
from tests.sentinel_cluster import DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS, SentinelCluster

IN_FLIGHT_SECONDS = 3.0  # the analysis the master dies under (below FAST's AI deadline, 4 s)
S3_FIELDS = {
    "storage_backend",
    "s3_bucket",
    "s3_endpoint_url",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_key_prefix",
}
WORKERS = ("multihost-worker-1", "multihost-worker-2")


def _as_env(fields: Mapping[str, Any]) -> dict[str, str]:
    """Settings fields as environment variables: names upper-cased, tuples comma-separated,
    None left out."""
    return {
        name.upper(): ",".join(value) if isinstance(value, tuple) else str(value)
        for name, value in fields.items()
        if value is not None
    }


def _status(event: ServerSentEvent) -> str | None:
    """A status event's task status; any other event by its name (`reconnect`); None for a
    heartbeat (a comment, which httpx-sse yields as an empty `message` once an id was seen)."""
    if event.event == "status":
        return str(event.json()["status"])
    return event.event if event.data else None


@dataclass(frozen=True)
class Host:
    """One process's machine, as far as files go: its working directory and its STORAGE_DIR."""

    directory: Path

    @property
    def storage_dir(self) -> Path:
        return self.directory / "storage"

    @classmethod
    def make(cls, root: Path, name: str) -> Host:
        host = cls(root / name)
        host.storage_dir.mkdir(parents=True)
        return host

    def files(self) -> list[Path]:
        """Every file under its directory but the process's log."""
        return [p for p in self.directory.rglob("*") if p.is_file() and p.suffix != ".log"]


class ApiProcess(ChildProcess):
    """`uvicorn app.main:create_app --factory` on a free loopback port; output in api.log."""

    url = ""

    @classmethod
    async def start(cls, env: dict[str, str], host: Host) -> ApiProcess:
        port = free_port()
        argv = [
            sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        child = await cls.spawn(argv, env, host.directory, "api")
        api = cls(child.process, child.log)
        api.url = f"http://127.0.0.1:{port}"
        return api


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[dict[str, Host]]:
    yield {name: Host.make(tmp_path / "hosts", name) for name in ("api", *WORKERS)}


@pytest.fixture
async def system(
    worker_settings: Settings,
    seaweed: EmbeddedSeaweed,
    sentinel_cluster: SentinelCluster,
    hosts: dict[str, Host],
    clean: None,
) -> AsyncIterator[tuple[Settings, ApiProcess, list[WorkerProcess]]]:
    """The API and two workers, each a process in its own directory, all through Sentinel,
    recordings in S3; stopped by PID at teardown."""
    s3 = s3_settings(worker_settings, seaweed)
    fields = (
        s3.model_dump(include=S3_FIELDS)
        | sentinel_cluster.settings_overrides()
        | LIVE
        | {"jwt_secret": worker_settings.jwt_secret}
    )

    def env_of(name: str) -> dict[str, str]:
        own = {"STORAGE_DIR": str(hosts[name].storage_dir), "WORKER_NAME": name}
        return worker_env(worker_settings, **_as_env(fields), **own)

    api = await ApiProcess.start(env_of("api"), hosts["api"])
    workers: list[WorkerProcess] = []
    try:
        for name in WORKERS:
            workers.append(await WorkerProcess.start(env_of(name), hosts[name].directory))

        async def ready() -> bool:
            assert api.returncode is None, f"the API exited:\n{api.output()}"
            with contextlib.suppress(httpx.TransportError):
                async with httpx.AsyncClient(base_url=api.url, timeout=2) as http:
                    return (await http.get("/readyz")).status_code == 200
            return False

        await wait_for(ready, within=60, interval=0.1)
        yield s3, api, workers
    finally:
        for worker in workers:
            await worker.kill()
        await api.kill()


async def test_tasks_streams_and_results_survive_a_failover_across_hosts(
    system: tuple[Settings, ApiProcess, list[WorkerProcess]],
    sentinel_cluster: SentinelCluster,
    seaweed: EmbeddedSeaweed,
    hosts: dict[str, Host],
    fake_ai: FakeAI,
    make_user: MakeUser,
    engine: AsyncEngine,
) -> None:
    s3, api, workers = system
    alice = await make_user()
    admin = await make_user(role=Role.ADMIN)
    async with httpx.AsyncClient(base_url=api.url, timeout=30.0) as http:

        async def beating_since(since: float) -> bool:
            """Both workers' heartbeats (written through Sentinel), each from its own process,
            are newer than `since` (Unix s), as the admin stats see them."""
            for worker in workers:
                assert worker.returncode is None, f"a worker exited:\n{worker.output()}"
            response = await http.get("/api/v1/admin/tasks/stats", headers=admin.headers)
            assert response.status_code == 200, response.text
            beats = response.json()["workers"] or []
            pids = {b["worker"]: b["pid"] for b in beats if b["last_heartbeat_at"] > since}
            return pids == dict(zip(WORKERS, (w.pid for w in workers), strict=True))

        await wait_for(partial(beating_since, 0.0), within=60, interval=0.2)
        first = await new_task(http, alice)
        done = await wait_for_status(http, alice, first, within=60)
        assert done["status"] == "success", done

        fake_ai.then(ok(latency=IN_FLIGHT_SECONDS))  # the analysis the failover interrupts
        in_flight = await new_task(http, alice)
        token = await http.post(
            f"/api/v1/tasks/analysis/{in_flight}/stream-token", headers=alice.headers
        )
        assert token.status_code == 200, token.text
        url = f"/api/v1/tasks/analysis/{in_flight}/events"
        statuses: list[str] = []
        params = {"stream_token": token.json()["stream_token"]}
        async with aconnect_sse(http, "GET", url, params=params) as source:
            events = source.aiter_sse()
            async for event in events:  # until the worker has it: the AI call is under way
                if (status := _status(event)) is not None:
                    statuses.append(status)
                if status == "processing":
                    break
            assert statuses[-1] == "processing", statuses

            old = await asyncio.to_thread(sentinel_cluster.kill_master)
            killed_at, killed = time.time(), time.monotonic()
            new = await asyncio.to_thread(sentinel_cluster.wait_for_failover, old)
            promoted, promoted_at = time.monotonic(), time.time()
            after = await new_task(http, alice)  # submitted after the failover
            done = await wait_for_status(http, alice, after, within=60)
            assert done["status"] == "success", done

            async def to_the_end() -> None:
                async for event in events:
                    if (status := _status(event)) is not None:
                        statuses.append(status)

            await asyncio.wait_for(to_the_end(), timeout=60)
        # the stream connected before the failover got its task's end, once
        assert statuses[-1] == "success" and statuses.count("success") == 1, statuses
        # both workers beat again, on the new master
        await wait_for(partial(beating_since, promoted_at), within=30, interval=0.2)

    async with engine.connect() as connection:
        tasks = {row[0]: row[1] for row in await connection.execute(text(TASKS))}
        results = {row[0]: row[1] for row in await connection.execute(text(RESULTS))}
        done_at = {row[0]: row[1] for row in await connection.execute(text(DONE_AT))}
    ids = {first, in_flight, after}
    assert {str(t) for t in tasks} == ids, tasks  # none lost, none made up
    assert set(tasks.values()) == {"success"}, tasks
    assert {str(t): n for t, n in results.items()} == dict.fromkeys(ids, 1), results

    # Recordings are in S3 only: three objects under the prefix, nothing on any local disk.
    stored = obstore.list(seaweed.store(s3.s3_key_prefix)).collect()
    assert len(stored) == len(ids), stored
    assert {name: host.files() for name, host in hosts.items()} == {n: [] for n in hosts}
    assert [worker.returncode for worker in workers] == [None, None]
    assert api.returncode is None, api.output()
    first_done = min(at for at in done_at.values() if at >= killed_at)
    print(
        f"FIGURE multihost-failover: failover-to-first-completion {first_done - killed_at:.2f} s"
        f" (SIGKILL of the master -> first task completed; {old} -> {new} promoted in"
        f" {promoted - killed:.2f} s; the task submitted after the failover completed"
        f" {done_at[uuid.UUID(after)] - killed_at:.2f} s after the SIGKILL, the one in flight"
        f" {done_at[uuid.UUID(in_flight)] - killed_at:.2f} s; down-after {DOWN_AFTER_MS} ms,"
        f" failover-timeout {FAILOVER_TIMEOUT_MS} ms)"
    )


TASKS = "SELECT task_id, status FROM ai_analysis_tasks"
RESULTS = "SELECT task_id, count(*) FROM ai_analysis_results GROUP BY task_id"
DONE_AT = "SELECT task_id, extract(epoch FROM completed_at)::float FROM ai_analysis_tasks"
