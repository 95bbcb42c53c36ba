"""Per-worker liveness: two real worker processes beat (default period); one is SIGKILLed;
`vocalborn worker-check NAME` fails for it within 30 s while the other keeps passing, and the
admin stats count one live worker."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from redis.asyncio import Redis

from app import liveness
from app.settings import Settings
from app.users.models import Role
from tests.analysis.conftest import wait_for
from tests.conftest import MakeUser
from tests.reliability.worker_process import WorkerProcess, worker_env

VOCALBORN = Path(sys.executable).parent / "vocalborn"
ACCEPTANCE_SECONDS = 30.0


async def _vocalborn(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str]:
    """Run the installed `vocalborn` command; its exit code and its output."""
    process = await asyncio.create_subprocess_exec(
        str(VOCALBORN), *args, cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_a_killed_worker_fails_its_check_and_the_other_keeps_passing(
    worker_settings: Settings,
    client: httpx.AsyncClient,
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    admin = await make_user(role=Role.ADMIN)
    env = worker_env(worker_settings)
    doomed = await WorkerProcess.start(env | {"WORKER_NAME": "liveness-doomed"}, tmp_path)
    survivor = await WorkerProcess.start(env | {"WORKER_NAME": "liveness-survivor"}, tmp_path)

    async def check(name: str) -> int:
        code, _ = await _vocalborn(env, tmp_path, "worker-check", name)
        return code

    async def stats() -> dict[str, object]:
        response = await client.get("/api/v1/admin/tasks/stats", headers=admin.headers)
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    try:

        async def both_alive() -> bool:
            return await check("liveness-doomed") == 0 and await check("liveness-survivor") == 0

        await wait_for(both_alive, within=60, interval=0.2)
        body = await stats()
        assert body["live_workers"] == 2, body["workers"]
        code, listing = await _vocalborn(env, tmp_path, "workers", "--json")
        beats = {beat["worker"]: beat for beat in json.loads(listing.splitlines()[0])}
        assert code == 0 and beats.keys() == {"liveness-doomed", "liveness-survivor"}
        assert beats["liveness-doomed"]["pid"] == doomed.pid
        assert beats["liveness-doomed"]["host"] == socket.gethostname()

        await doomed.kill()  # SIGKILL: no shutdown, the key is left to expire
        killed = time.monotonic()

        async def failing() -> bool:
            return await check("liveness-doomed") != 0

        await wait_for(failing, within=ACCEPTANCE_SECONDS, interval=0.5)
        took = time.monotonic() - killed
        assert await check("liveness-survivor") == 0
        body = await stats()
        assert body["live_workers"] == 1, body["workers"]
        assert [w["worker"] for w in body["workers"]] == ["liveness-survivor"]  # type: ignore[attr-defined]
        print(f"FIGURE worker-liveness: SIGKILL -> worker-check non-zero in {took:.1f} s")
    finally:
        await doomed.kill()
        await survivor.kill()


async def test_without_a_name_the_check_asks_for_a_worker_on_this_host(redis: Redis) -> None:
    elsewhere = liveness.Heartbeat("far", "another-host", 1, 0, "x", 0.0, time.time(), 5.0)
    await liveness.write(redis, elsewhere)
    alive, line = await liveness.check(redis, None)
    assert not alive and socket.gethostname() in line
    here = liveness.Heartbeat.now("near", time.time(), 2, 5.0)
    await liveness.write(redis, here)
    alive, line = await liveness.check(redis, None)
    assert alive and "near" in line and "far" not in line
    assert await redis.pttl(liveness.heartbeat_key("near")) > 10_000  # three periods of 5 s


async def test_a_heartbeat_key_expires_after_three_periods(redis: Redis) -> None:
    beat = liveness.Heartbeat.now("short", time.time(), 0, 0.1)
    await liveness.write(redis, beat)
    assert [b.worker for b in await liveness.live_workers(redis)] == ["short"]
    assert 0 < await redis.pttl(liveness.heartbeat_key("short")) <= 300  # three periods

    async def expired() -> bool:
        return await liveness.live_worker(redis, "short") is None

    await wait_for(expired, within=5, interval=0.01)
    assert await liveness.live_workers(redis) == []
