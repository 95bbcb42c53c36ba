"""SSE fan-out: ours (events through Redis, authorised streams) against a bare sse-starlette
endpoint fed from memory, on the same machine, in one run (issue 5).

    uv run python bench/sse_fanout.py            # the full run (~5 min), prints the tables
    uv run python bench/sse_fanout.py --clients 200 --measure 5 --rounds 1   # a quick smoke run

For each client count (1,000 and 2,000 over 100 tasks, 5 events per second per task, so per
client), in three rounds, and each side (bare, ours, one after the other), the server runs as
its own process (uvicorn, one worker, uvloop + httptools for both) and the load generator
(bench/sse_loadgen.py) as another. Ours: embedded PostgreSQL and Redis (app/embedded.py)
under a temp dir, migrated; one user, session, record and `processing` task per task slot
inserted with SQL; this process publishes each task's status document 5 times a second through
`Publisher.publish` (`updated_at` = the publish time, `worker_name` = `seq-<n>`); each client
gets its own stream token from `POST …/stream-token` and connects with `?stream_token=`.

Measured over the load generator's window: p50/p99 publish→receipt, events delivered, lost
events (sequence gaps per client), server CPU per delivered event and RSS per connection
(psutil on the server process), Redis pub/sub connections (`CLIENT LIST`). The tables show
each side's median over the rounds and each round's ratios; every scenario is written to
bench/results/sse_fanout.json.

The machine may have only 2 cores, shared by server, load generator, Redis and the publisher
(this process): latencies include that contention, for both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = BENCH / "results" / "sse_fanout.json"
TASKS = 100
RATE = 5.0
GOALS = {"p99": 1.5, "cpu": 1.3, "rss": 1.1}  # issue 12: CPU per event <= 1.3x
GOAL_CLIENTS = 2000
SERVER_START_SECONDS = 30.0
PHASE_SLACK_SECONDS = 20.0
MAX_WARMUP = 40.0
# With --pin: the server side (the API server and Redis) on one core, the outside world (load
# generator, the publisher standing in for the workers, PostgreSQL) on the other.
SERVER_CPU, LOAD_CPU = 1, 0


# -- the servers (run as `serve` in their own process) -----------------------------------------
def serve(args: argparse.Namespace) -> None:
    import uvicorn

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app: Any
    if args.kind == "bare":
        from sse_bare import create_bare_app

        app = create_bare_app(TASKS, RATE)
    else:
        from app.main import create_app
        from app.settings import Settings

        app = create_app(Settings(_env_file=None))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    if args.profile:
        import cProfile
        import signal as signals

        # The orchestrator brackets the measurement window: SIGUSR1 starts, SIGUSR2 stops.
        profiler = cProfile.Profile()
        signals.signal(signals.SIGUSR1, lambda *_: profiler.enable())
        signals.signal(signals.SIGUSR2, lambda *_: profiler.disable())
        try:
            server.run()
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        server.run()


# -- fixtures ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSlot:
    task_id: uuid.UUID
    record_id: uuid.UUID
    session_id: uuid.UUID
    user_id: uuid.UUID
    access_token: str


async def create_tasks(pg_url: str, settings: Any, count: int) -> list[TaskSlot]:
    """One user, practice session, record and `processing` task per slot, by SQL."""
    import asyncpg

    from app.auth import issue_access_token
    from app.users.models import Role

    slots: list[TaskSlot] = []
    connection = await asyncpg.connect(pg_url)
    try:
        async with connection.transaction():
            for index in range(count):
                user_id = await connection.fetchval(
                    "INSERT INTO users (email) VALUES ($1) RETURNING user_id",
                    f"bench-{index}@example.test",
                )
                session_id = await connection.fetchval(
                    "INSERT INTO practice_sessions (user_id, title) VALUES ($1, $2)"
                    " RETURNING practice_session_id",
                    user_id,
                    f"bench {index}",
                )
                record_id = await connection.fetchval(
                    "INSERT INTO practice_records (practice_session_id, audio_storage_key,"
                    " audio_content_type, audio_size_bytes, record_status)"
                    " VALUES ($1, $2, 'audio/wav', 64000, 'ai_processing')"
                    " RETURNING practice_record_id",
                    session_id,
                    f"bench/{index}.wav",
                )
                task_id = await connection.fetchval(
                    "INSERT INTO ai_analysis_tasks (practice_record_id, user_id, status,"
                    " progress, current_step, started_at, attempt)"
                    " VALUES ($1, $2, 'processing', 40, 'feature_extraction', now(), 1)"
                    " RETURNING task_id",
                    record_id,
                    user_id,
                )
                token = issue_access_token(settings, user_id, Role.USER, ttl_seconds=3600)
                slots.append(TaskSlot(task_id, record_id, session_id, user_id, token))
    finally:
        await connection.close()
    return slots


# -- publishing (ours) ------------------------------------------------------------------------
@dataclass
class PublishLoop:
    """Each task's status document `rate` times a second through our Publisher, the ticks
    spread evenly over the period; `updated_at` is the publish time, `worker_name` the
    per-task sequence number."""

    redis_url: str
    slots: list[TaskSlot]
    rate: float
    published: int = 0
    max_lag: float = 0.0
    _runners: list[asyncio.Task[None]] = field(default_factory=list)
    _redis: Any = None

    async def start(self) -> None:
        from redis.asyncio import Redis

        from app.analysis.eta import Estimator
        from app.analysis.progress import Publisher

        self._redis = Redis.from_url(self.redis_url)
        publisher = Publisher(self._redis, cast(Estimator, None))  # publish() needs no ETA
        period = 1.0 / self.rate
        origin = time.monotonic() + 0.05
        for index, slot in enumerate(self.slots):
            first = origin + period * index / len(self.slots)
            self._runners.append(asyncio.create_task(self._run(publisher, slot, first, period)))

    async def _run(self, publisher: Any, slot: TaskSlot, first: float, period: float) -> None:
        from app.analysis.schemas import CurrentStep, TaskStatusOut

        started = datetime.now(UTC) - timedelta(seconds=30)
        step = CurrentStep(code="feature_extraction", label="語音特徵提取", index=3)
        seq = 0
        while True:
            seq += 1
            due = first + seq * period
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.max_lag = max(self.max_lag, -delay)
            document = TaskStatusOut(
                task_id=slot.task_id,
                practice_record_id=slot.record_id,
                practice_session_id=slot.session_id,
                status="processing",
                progress=seq % 100,
                current_step=step,
                total_steps=5,
                started_at=started,
                completed_at=None,
                estimated_remaining_time="PT12S",
                worker_name=f"seq-{seq}",
                retry_count=0,
                queue_position=None,
                lane="interactive",
                error_code=None,
                error_message=None,
                cancel_requested=False,
                updated_at=datetime.now(UTC),
            )
            await publisher.publish(document)
            self.published += 1

    async def stop(self) -> None:
        for runner in self._runners:
            runner.cancel()
        for runner in self._runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._runners.clear()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


# -- processes --------------------------------------------------------------------------------
def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START_SECONDS
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"server on port {port} did not become healthy")


async def stream_paths(port: int, slots: list[TaskSlot], clients: int) -> list[str]:
    """One stream token per client, from the API (bearer auth), as a browser would. An idle
    connection is reused for KEEPALIVE_SECONDS at most, as the CLI does: uvicorn closes one
    after 5 s, httpx's default expiry is 5 s too, and this process's loop, busy publishing,
    can leave a connection idle that long; a request sent on a connection the server was
    closing failed (httpx.ReadError, 2 full runs of 5 on 2026-11-30)."""
    import httpx

    from app.client.api import KEEPALIVE_SECONDS

    gate = asyncio.Semaphore(16)
    limits = httpx.Limits(
        max_connections=16, max_keepalive_connections=16, keepalive_expiry=KEEPALIVE_SECONDS
    )
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=30.0, limits=limits
    ) as http:

        async def token(index: int) -> str:
            slot = slots[index % len(slots)]
            async with gate:
                response = await http.post(
                    f"/api/v1/tasks/analysis/{slot.task_id}/stream-token",
                    headers={"Authorization": f"Bearer {slot.access_token}"},
                )
            response.raise_for_status()
            return str(response.json()["events_url"])

        return await asyncio.gather(*(token(index) for index in range(clients)))


async def pubsub_connections(redis: Any) -> int:
    clients = await redis.client_list()
    return sum(
        1
        for client in clients
        if int(client.get("sub", 0)) > 0
        or int(client.get("psub", 0)) > 0
        or int(client.get("ssub", 0)) > 0
    )


async def read_phase(stream: asyncio.StreamReader, phase: str, seconds: float) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        while True:
            line = await stream.readline()
            if not line:
                raise RuntimeError(f"load generator ended before phase {phase!r}")
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("phase") == phase:
                    return record


@dataclass
class Environment:
    workdir: Path
    redis_url: str
    redis_pid: int
    server_env: dict[str, str]
    slots: list[TaskSlot]
    warmup: float
    measure: float
    profile: bool
    pin: bool


async def run_scenario(env: Environment, kind: str, clients: int) -> dict[str, Any]:
    import psutil
    from redis.asyncio import Redis

    from app.embedded import free_port

    port = free_port()
    log_path = env.workdir / f"server-{kind}-{clients}.log"
    command = [sys.executable, str(BENCH / "sse_fanout.py"), "serve", "--kind", kind]
    command += ["--port", str(port)]
    if env.profile and clients == GOAL_CLIENTS:
        command += ["--profile", str(env.workdir / f"{kind}.prof")]
    redis = Redis.from_url(env.redis_url)
    publisher: PublishLoop | None = None
    with log_path.open("wb") as log:
        server = subprocess.Popen(  # noqa: ASYNC220 (returns at once; stopped in a thread)
            command,
            env=env.server_env,
            cwd=env.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if env.pin:
        os.sched_setaffinity(server.pid, {SERVER_CPU})
    try:
        await wait_healthy(port, server)
        if kind == "ours":
            await redis.flushdb()
            publisher = PublishLoop(env.redis_url, env.slots, RATE)
            await publisher.start()
            paths = await stream_paths(port, env.slots, clients)
        else:
            paths = [f"/events/{index % TASKS}" for index in range(clients)]
        paths_file = env.workdir / f"paths-{kind}-{clients}.json"
        paths_file.write_text(json.dumps(paths))
        await asyncio.sleep(1.0)
        process = psutil.Process(server.pid)
        rss_before = process.memory_info().rss
        loadgen_log = (env.workdir / f"loadgen-{kind}-{clients}.log").open("wb")
        loadgen = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH / "sse_loadgen.py"),
            "--port",
            str(port),
            "--paths",
            str(paths_file),
            "--warmup",
            str(env.warmup),
            "--measure",
            str(env.measure),
            "--max-warmup",
            str(MAX_WARMUP),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=loadgen_log,
        )
        try:
            assert loadgen.stdout is not None
            await read_phase(loadgen.stdout, "half", 150.0)
            await asyncio.sleep(1.0)  # within the load generator's pause
            rss_half = process.memory_info().rss
            connected = await read_phase(loadgen.stdout, "connected", 150.0)
            if connected["failed"] > clients // 100:
                raise RuntimeError(f"{kind}: connections failed: {connected} (see {log_path})")
            await read_phase(loadgen.stdout, "window_start", MAX_WARMUP + PHASE_SLACK_SECONDS)
            redis_process = psutil.Process(env.redis_pid)
            cpu0, redis0, t0 = process.cpu_times(), redis_process.cpu_times(), time.monotonic()
            published0 = publisher.published if publisher else 0
            profiling = env.profile and clients == GOAL_CLIENTS
            if profiling:
                server.send_signal(signal.SIGUSR1)
            if publisher is not None:
                publisher.max_lag = 0.0  # lag within the window only
            pubsub_start = await pubsub_connections(redis) if kind == "ours" else None
            await read_phase(loadgen.stdout, "window_end", env.measure + PHASE_SLACK_SECONDS)
            if profiling:
                server.send_signal(signal.SIGUSR2)
            cpu1, redis1, t1 = process.cpu_times(), redis_process.cpu_times(), time.monotonic()
            rss_after = process.memory_info().rss
            published1 = publisher.published if publisher else 0
            pubsub_end = await pubsub_connections(redis) if kind == "ours" else None
            result = await read_phase(loadgen.stdout, "result", PHASE_SLACK_SECONDS)
            await asyncio.wait_for(loadgen.wait(), 10)
        finally:
            if loadgen.returncode is None:
                loadgen.terminate()
                try:
                    await asyncio.wait_for(loadgen.wait(), 10)
                except TimeoutError:
                    loadgen.kill()
                    await loadgen.wait()
            loadgen_log.close()
    finally:
        if publisher is not None:
            await publisher.stop()
        await redis.aclose()
        await asyncio.to_thread(stop_process, server)

    elapsed = t1 - t0
    server_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    redis_cpu = (redis1.user - redis0.user) + (redis1.system - redis0.system)
    delivered = int(result["delivered"])
    open_clients = int(result["open_at_end"]) or 1
    return {
        "kind": kind,
        "clients": clients,
        "connected": connected["ok"],
        "connect_failed": connected["failed"],
        "connect_seconds": connected["seconds"],
        "open_at_end": result["open_at_end"],
        "warmup_seconds": result["warmup_seconds"],
        "per_second_max_ms": result["per_second_max_ms"],
        "window_seconds": result["window_seconds"],
        "delivered": delivered,
        "expected": round(clients * RATE * result["window_seconds"]),
        "lost": result["lost"],
        "out_of_order": result["out_of_order"],
        "p50_ms": result["p50_ms"],
        "p90_ms": result["p90_ms"],
        "p99_ms": result["p99_ms"],
        "max_ms": result["max_ms"],
        "min_events_per_client": result["min_events_per_client"],
        "server_cpu_seconds": server_cpu,
        "server_core_fraction": server_cpu / elapsed,
        "server_cpu_us_per_event": server_cpu / max(delivered, 1) * 1e6,
        "server_user_us_per_event": (cpu1.user - cpu0.user) / max(delivered, 1) * 1e6,
        "server_system_us_per_event": (cpu1.system - cpu0.system) / max(delivered, 1) * 1e6,
        "rss_before_mib": rss_before / 2**20,
        "rss_after_mib": rss_after / 2**20,
        "rss_per_connection_kib": (rss_after - rss_before) / open_clients / 1024,
        "rss_half_mib": rss_half / 2**20,
        "rss_slope_kib": (rss_after - rss_half) / max(clients - clients // 2, 1) / 1024,
        "redis_core_fraction": redis_cpu / elapsed if kind == "ours" else None,
        "pubsub_connections": (max(pubsub_start or 0, pubsub_end or 0) if kind == "ours" else None),
        "pubsub_connections_samples": [pubsub_start, pubsub_end] if kind == "ours" else None,
        "published_in_window": published1 - published0 if kind == "ours" else None,
        "publisher_max_lag_ms": publisher.max_lag * 1000 if publisher else None,
        "loadgen_core_fraction": result["loadgen_core_fraction"],
    }


# -- the report -------------------------------------------------------------------------------
Row = tuple[str, str, str, str, str, str]


def _ratio(ours: float, bare: float) -> float:
    return ours / bare if bare > 0 else float("inf")


def table(bare: dict[str, Any], ours: dict[str, Any]) -> tuple[list[Row], dict[str, bool]]:
    clients = ours["clients"]
    binding = clients == GOAL_CLIENTS
    met: dict[str, bool] = {}
    rows: list[Row] = []

    def goal_row(name: str, key: str, fmt: str, goal_key: str) -> None:
        ratio = _ratio(ours[key], bare[key])
        ok = ratio <= GOALS[goal_key]
        met[goal_key] = ok
        rows.append(
            (
                name,
                format(bare[key], fmt),
                format(ours[key], fmt),
                f"{ratio:.2f}x",
                f"<= {GOALS[goal_key]:.2f}x",
                ("yes" if ok else "NO") if binding else ("(yes)" if ok else "(no)"),
            )
        )

    def info_row(name: str, key: str, fmt: str) -> None:
        b, o = bare.get(key), ours.get(key)
        numbers = isinstance(b, int | float) and isinstance(o, int | float)
        ratio = f"{_ratio(cast(float, o), cast(float, b)):.2f}x" if numbers and b else ""
        rows.append(
            (
                name,
                format(b, fmt) if b is not None else "-",
                format(o, fmt) if o is not None else "-",
                ratio,
                "",
                "",
            )
        )

    info_row("connected clients", "connected", "d")
    info_row("time to connect all (s)", "connect_seconds", ".1f")
    info_row("warm-up until no event > 250 ms late (s)", "warmup_seconds", ".1f")
    info_row("p50 publish->receipt (ms)", "p50_ms", ".1f")
    goal_row("p99 publish->receipt (ms)", "p99_ms", ".1f", "p99")
    info_row("max publish->receipt (ms)", "max_ms", ".1f")
    info_row("events delivered (window)", "delivered", "d")
    info_row("events expected (clients x 5/s x window)", "expected", "d")
    lost_ok = ours["lost"] == 0 and ours["out_of_order"] == 0
    met["lost"] = lost_ok
    rows.append(
        (
            "lost events (seq gaps) / out of order",
            f"{bare['lost']} / {bare['out_of_order']}",
            f"{ours['lost']} / {ours['out_of_order']}",
            "",
            "0",
            ("yes" if lost_ok else "NO") if binding else ("(yes)" if lost_ok else "(no)"),
        )
    )
    goal_row("server CPU per delivered event (us)", "server_cpu_us_per_event", ".1f", "cpu")
    info_row("  of which user (us)", "server_user_us_per_event", ".1f")
    info_row("  system (us)", "server_system_us_per_event", ".1f")
    info_row("server CPU (fraction of a core)", "server_core_fraction", ".2f")
    goal_row("server RSS per connection (KiB)", "rss_per_connection_kib", ".1f", "rss")
    info_row("  marginal: RSS(N) - RSS(N/2), per conn (KiB)", "rss_slope_kib", ".1f")
    info_row("server RSS before clients (MiB)", "rss_before_mib", ".1f")
    info_row("server RSS with clients (MiB)", "rss_after_mib", ".1f")
    pubsub = ours["pubsub_connections"]
    pubsub_ok = ours["pubsub_connections_samples"] == [1, 1]
    met["pubsub"] = pubsub_ok
    rows.append(
        (
            "Redis pub/sub connections",
            "-",
            str(pubsub),
            "",
            "== 1",
            ("yes" if pubsub_ok else "NO") if binding else ("(yes)" if pubsub_ok else "(no)"),
        )
    )
    info_row("redis-server CPU (fraction of a core)", "redis_core_fraction", ".2f")
    info_row("publisher max lag in window (ms)", "publisher_max_lag_ms", ".1f")
    info_row("load generator CPU (fraction of a core)", "loadgen_core_fraction", ".2f")
    return rows, met


WORST_OF_ROUNDS: dict[str, Callable[[list[Any]], Any]] = {
    "lost": max,
    "out_of_order": max,
    "connected": min,
    "pubsub_connections": lambda counts: max(counts, key=lambda count: abs(count - 1)),
}


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's rounds as one scenario: the median of each measure (the lower middle one of
    an even count; rounds alternate bare and ours, so both meet the same drift of the machine),
    the worst of the rounds for losses and connections."""
    combined = dict(rounds[0])
    for key, value in rounds[0].items():
        values = [r[key] for r in rounds]
        if key in WORST_OF_ROUNDS and all(v is not None for v in values):
            combined[key] = WORST_OF_ROUNDS[key](values)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            combined[key] = statistics.median_low(values)
    return combined


def per_round(bare: list[dict[str, Any]], ours: list[dict[str, Any]]) -> str:
    lines = ["per round (ours / bare, each pair measured back to back):"]
    for name, key in (
        ("p99", "p99_ms"),
        ("cpu", "server_cpu_us_per_event"),
        ("rss", "rss_per_connection_kib"),
    ):
        ratios = [_ratio(o[key], b[key]) for b, o in zip(bare, ours, strict=True)]
        lines.append(f"  {name}: " + "  ".join(f"{r:.2f}x" for r in ratios))
    return "\n".join(lines)


def render(rows: list[Row]) -> str:
    header: Row = ("metric", "bare", "ours", "ratio", "goal", "met?")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(6)]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(header))]
    lines.append("-+-".join("-" * width for width in widths))
    lines += [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    return "\n".join(lines)


# -- the orchestrator ---------------------------------------------------------------------------
async def orchestrate(args: argparse.Namespace) -> int:
    from app import migrate
    from app.embedded import EmbeddedPostgres, EmbeddedRedis, ensure_database
    from app.settings import Settings, asyncpg_url

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.pin:
        os.sched_setaffinity(0, {LOAD_CPU})  # inherited by PostgreSQL and the load generator
    workdir = Path(tempfile.mkdtemp(prefix="sse-fanout-"))
    postgres = EmbeddedPostgres(workdir / "postgres")
    redis_server = EmbeddedRedis(workdir / "redis")
    started = time.monotonic()
    scenarios: list[dict[str, Any]] = []
    try:
        await asyncio.to_thread(postgres.start)
        await asyncio.to_thread(redis_server.start)
        if args.pin:
            os.sched_setaffinity(redis_server.pid, {SERVER_CPU})
        pg_url = await ensure_database(postgres.url, "vocalborn_bench")
        database_url = asyncpg_url(pg_url)
        await asyncio.to_thread(migrate.upgrade, database_url)
        jwt_secret = secrets.token_urlsafe(48)
        settings = Settings(
            _env_file=None,
            environment="production",
            database_url=database_url,
            redis_url=redis_server.url,
            jwt_secret=jwt_secret,
        )
        slots = await create_tasks(pg_url, settings, TASKS)
        server_env = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
        } | {
            "PYTHONPATH": str(ROOT),
            "ENVIRONMENT": "production",
            "DATABASE_URL": database_url,
            "DATABASE_POOL_SIZE": "20",
            "REDIS_URL": redis_server.url,
            "JWT_SECRET": jwt_secret,
            "STORAGE_DIR": str(workdir / "storage"),
            "MAX_STREAMS_PER_USER": "10000",
            "STREAM_TOKEN_TTL_SECONDS": "600",
            "SSE_HEARTBEAT_SECONDS": "15",
            "LOG_LEVEL": "WARNING",
        }
        env = Environment(
            workdir=workdir,
            redis_url=redis_server.url,
            redis_pid=redis_server.pid,
            server_env=server_env,
            slots=slots,
            warmup=args.warmup,
            measure=args.measure,
            profile=args.profile,
            pin=args.pin,
        )
        for clients in args.clients:
            for round_ in range(1, args.rounds + 1):
                for kind in ("bare", "ours"):
                    print(f"... {kind}, {clients} clients, round {round_}", file=sys.stderr)
                    scenario = await run_scenario(env, kind, clients)
                    scenarios.append(scenario | {"round": round_})
    finally:
        redis_server.stop()
        postgres.stop()
        for kind in ("bare", "ours"):
            if args.profile and (workdir / f"{kind}.prof").exists():
                target = BENCH / "results" / f"sse_fanout_{kind}.prof"
                target.parent.mkdir(exist_ok=True)
                shutil.copy(workdir / f"{kind}.prof", target)
                print(f"cProfile of {kind} at {GOAL_CLIENTS} clients: {target}", file=sys.stderr)
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"SSE fan-out, {TASKS} tasks, {RATE:g} events/s per task (so per client), "
        f"window {args.measure:g} s after a warm-up of >= {args.warmup:g} s (until drained); "
        f"{os.cpu_count()} cores shared by server, load generator, Redis and publisher; "
        f"Python {platform.python_version()}, uvicorn + uvloop + httptools"
    )
    summary: dict[str, Any] = {}
    all_met = True
    for clients in args.clients:
        rounds = {
            kind: [s for s in scenarios if s["kind"] == kind and s["clients"] == clients]
            for kind in ("bare", "ours")
        }
        bare, ours = combine(rounds["bare"]), combine(rounds["ours"])
        rows, met = table(bare, ours)
        binding = clients == GOAL_CLIENTS
        title = "goals apply" if binding else "goals apply at 2,000 only; shown in ()"
        print(f"\n{clients:,} clients ({title}), median of {len(rounds['ours'])} round(s)")
        print(render(rows))
        if len(rounds["ours"]) > 1:
            print(per_round(rounds["bare"], rounds["ours"]))
        summary[str(clients)] = met
        if binding:
            all_met = all(met.values())
    if GOAL_CLIENTS in args.clients:
        met = summary[str(GOAL_CLIENTS)]
        missed = [name for name, ok in met.items() if not ok]
        print(
            f"\nSummary at {GOAL_CLIENTS:,} clients: {sum(met.values())}/{len(met)} goals met"
            + (f"; missed: {', '.join(missed)}" if missed else "")
            + f" (run took {time.monotonic() - started:.0f} s)"
        )
    else:
        print(f"\n(no {GOAL_CLIENTS:,}-client scenario: goals not evaluated)")
    if args.write:
        results = Path(args.results)
        results.parent.mkdir(exist_ok=True)
        results.write_text(  # noqa: ASYNC240 (once, at the end)
            json.dumps(
                {
                    "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "tasks": TASKS,
                    "events_per_second_per_task": RATE,
                    "warmup_seconds": args.warmup,
                    "window_seconds": args.measure,
                    "rounds": args.rounds,
                    "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                    "goals_at_clients": GOAL_CLIENTS,
                    "goals": GOALS,
                    "met": summary,
                    "scenarios": scenarios,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"written: {results}")
    return 0 if all_met else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("serve", help="(internal) run one server process")
    server.add_argument("--kind", choices=("bare", "ours"), required=True)
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--profile", help="write cProfile stats here at exit")
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--measure", type=float, default=15.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="bare/ours pairs per client count (medians shown)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile both servers at 2,000 clients over the window (slows them; not for tables)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="server and Redis on core 1, load generator, publisher and PostgreSQL on core 0",
    )
    parser.add_argument(
        "--no-write", dest="write", action="store_false", help="do not write the results file"
    )
    parser.add_argument(
        "--results",
        default=str(RESULTS),
        help="where to write the results (default: bench/results/sse_fanout.json)",
    )
    args = parser.parse_args()
    if args.command == "serve":
        serve(args)
        return
    sys.exit(asyncio.run(orchestrate(args)))


if __name__ == "__main__":
    main()
