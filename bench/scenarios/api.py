"""(a) Submit and (b) status of a pending task, 8 and 64 clients, against a trivial FastAPI
endpoint served with the same uvicorn flags.

Ours: `uvicorn app.main:create_app --factory` (one worker, uvloop, httptools, access log off),
settings at their defaults but for the servers. The baseline: `uvicorn bench.trivial_app:app`
with the same flags. The load generator (bench/loadgen.py) is its own process: one keep-alive
connection per client, closed loop. Each client is its own user with a bearer token.

Submit: every request names a record of its user that has no task yet (seeded by SQL before
each round, after emptying the tables and the queue, so that each round starts alike): one
pending task and one arq job per request. Status: K pending tasks (jobs in arq's queue, no
worker running), seeded once per client count; each client cycles through its user's tasks.
Each round measures the baseline and ours back to back (the order alternates).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import uuid
from dataclasses import dataclass
from typing import Any

from bench.context import Context
from bench.fixtures import User, create_records, create_tasks, create_users, enqueue
from bench.harness import Child
from bench.procstat import cpu_seconds
from bench.profile import Profile
from bench.report import Goal, Row, Section

PHASE_TIMEOUT = 120.0
SUBMIT_PATH = "/api/v1/tasks/analysis/submit"


@dataclass(frozen=True)
class Sizes:
    clients: tuple[int, ...]
    warmup: float
    measure: float
    rounds: int
    status_tasks: int
    submit_cap: float  # req/s the submit records are seeded for (a client that runs out stops)


FULL = Sizes(clients=(8, 64), warmup=1.0, measure=5.0, rounds=3, status_tasks=1000, submit_cap=4000)
QUICK = Sizes(clients=(8, 64), warmup=0.3, measure=1.0, rounds=1, status_tasks=200, submit_cap=4000)

# Goals from the issue, by (scenario, clients): req/s ratio, p99 (ms).
RATIO_GOALS = {("submit", 8): 0.15, ("status", 8): 0.35}
P99_GOALS = {8: 100.0, 64: 250.0}


def request(method: str, path: str, token: str, body: str | None = None) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}"]
    if body is not None:
        sample = body.replace("{}", str(uuid.UUID(int=0)))
        lines += ["Content-Type: application/json", f"Content-Length: {len(sample.encode())}"]
    return "\r\n".join(lines) + "\r\n\r\n" + (body or "")


def submit_body() -> str:
    return '{"practice_record_id": "{}"}'


@dataclass
class Load:
    rps: float
    p99_ms: float
    errors: float
    cpu_ms_per_request: float
    loadgen_core: float
    server_core: float
    exhausted: int


async def run_load(
    ctx: Context,
    name: str,
    server: Child,
    port: int,
    clients: list[dict[str, Any]],
    expect: int,
    sizes: Sizes,
    profile: str | None = None,
) -> Load:
    """One load generator process against `port`; the server's CPU over its window."""
    spec = {
        "port": port,
        "warmup": sizes.warmup,
        "measure": sizes.measure,
        "expect": [expect],
        "clients": clients,
    }
    spec_path = ctx.workdir / f"loadgen-{name}.json"
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, "-m", "bench.loadgen", str(spec_path)]
    loadgen = ctx.processes.start(
        f"loadgen-{name}", argv, ctx.stack.service_env(), stdout_pipe=True
    )
    profiler: Profile | None = None
    try:

        async def phase(wanted: str) -> dict[str, Any]:
            assert loadgen.popen.stdout is not None
            while True:
                line = await asyncio.wait_for(
                    asyncio.to_thread(loadgen.popen.stdout.readline), PHASE_TIMEOUT
                )
                if not line:
                    raise RuntimeError(f"load generator ended before {wanted}:\n{loadgen.output()}")
                record: dict[str, Any] = json.loads(line)
                if record.get("phase") == wanted:
                    return record

        await phase("connected")
        await phase("window_start")
        cpu0 = cpu_seconds(server.pid)
        if profile:
            profiler = Profile(ctx.processes, server.pid, profile).start()
        await phase("window_end")
        cpu1 = cpu_seconds(server.pid)
        if profiler is not None:
            await profiler.finish()
        result = await phase("result")
        await asyncio.to_thread(loadgen.popen.wait, 10)
    finally:
        ctx.processes.stop(loadgen)
    completed = max(int(result["completed"]), 1)
    return Load(
        rps=float(result["rps"]),
        p99_ms=float(result["p99_ms"]),
        errors=float(result["errors"]),
        cpu_ms_per_request=1000 * (cpu1 - cpu0) / completed,
        loadgen_core=float(result["loadgen_core_fraction"]),
        server_core=(cpu1 - cpu0) / float(result["window_seconds"]),
        exhausted=int(result["exhausted_clients"]),
    )


async def seed_submit(
    ctx: Context, clients: int, sizes: Sizes
) -> tuple[list[User], list[list[str]]]:
    stack = ctx.stack
    await stack.clean()
    users = await create_users(stack.pg_url, stack.settings(), clients)
    per_user = math.ceil(sizes.submit_cap * (sizes.warmup + sizes.measure) / clients)
    records = await create_records(stack.pg_url, users, per_user)
    return users, [[str(r) for r in per] for per in records]


async def seed_status(
    ctx: Context, clients: int, sizes: Sizes
) -> tuple[list[User], list[list[str]]]:
    from app import redis_client

    stack = ctx.stack
    await stack.clean()
    users = await create_users(stack.pg_url, stack.settings(), clients)
    per_user = max(1, sizes.status_tasks // clients)
    records = await create_records(stack.pg_url, users, per_user)
    tasks = await create_tasks(stack.pg_url, [r for per in records for r in per])
    arq = redis_client.connect(stack.redis_url())
    try:
        await enqueue(arq, tasks, deferred=False)
    finally:
        await arq.aclose()
    by_record = {task.record_id: str(task.task_id) for task in tasks}
    return users, [[by_record[r] for r in per] for per in records]


def _clients(templates: list[str], values: list[list[str]], cycle: bool) -> list[dict[str, Any]]:
    return [
        {"template": t, "values": v, "cycle": cycle} for t, v in zip(templates, values, strict=True)
    ]


async def run_kind(ctx: Context, kind: str) -> list[Row]:
    sizes = QUICK if ctx.quick else FULL
    rounds = ctx.rounds(sizes.rounds)
    api, api_port = await ctx.api()
    trivial, trivial_port = await ctx.trivial()
    rows: list[Row] = []
    for clients in sizes.clients:
        ours: list[Load] = []
        base: list[Load] = []
        if kind == "status":
            users, values = await seed_status(ctx, clients, sizes)
        for round_ in range(1, rounds + 1):
            if kind == "submit":
                users, values = await seed_submit(ctx, clients, sizes)
            if kind == "submit":
                ours_templates = [
                    request("POST", SUBMIT_PATH, u.token, submit_body()) for u in users
                ]
                base_templates = [request("POST", "/submit", u.token, submit_body()) for u in users]
                expect = 202
            else:
                ours_templates = [
                    request("GET", "/api/v1/tasks/analysis/{}/status", u.token) for u in users
                ]
                base_templates = [request("GET", "/status/{}", u.token) for u in users]
                expect = 200
            for side in ("baseline", "ours") if round_ % 2 else ("ours", "baseline"):
                label = f"{kind}-{clients}-{side}-{round_}"
                ctx.log(f"{kind}: {side}, {clients} clients, round {round_}/{rounds}")
                if side == "ours":
                    profile = None
                    if ctx.profile and round_ == rounds:
                        profile = f"{kind}-{clients}-api"
                    ours.append(
                        await run_load(
                            ctx,
                            label,
                            api,
                            api_port,
                            _clients(ours_templates, values, cycle=kind == "status"),
                            expect,
                            sizes,
                            profile,
                        )
                    )
                else:
                    base.append(
                        await run_load(
                            ctx,
                            label,
                            trivial,
                            trivial_port,
                            _clients(base_templates, values, cycle=True),
                            expect,
                            sizes,
                        )
                    )
        rows += _rows(kind, clients, ours, base)
    return rows


def _rows(kind: str, clients: int, ours: list[Load], base: list[Load]) -> list[Row]:
    scenario = f"{kind}, {clients} clients"
    ratio_goal = RATIO_GOALS.get((kind, clients))
    rows = [
        Row(
            scenario,
            "throughput",
            [x.rps for x in ours],
            [x.rps for x in base],
            "trivial",
            "req/s",
            Goal("ratio", ">=", ratio_goal) if ratio_goal else None,
        ),
        Row(
            scenario,
            "p99 latency",
            [x.p99_ms for x in ours],
            [x.p99_ms for x in base],
            "trivial",
            "ms",
            Goal("value", "<=", P99_GOALS[clients]),
        ),
        Row(
            scenario,
            "errors",
            [x.errors for x in ours],
            [x.errors for x in base],
            "trivial",
            "",
            Goal("value", "<=", 0, "0"),
        ),
        Row(
            scenario,
            "server CPU per request",
            [x.cpu_ms_per_request for x in ours],
            [x.cpu_ms_per_request for x in base],
            "trivial",
            "ms",
        ),
        Row(
            scenario,
            "server CPU (share of a core)",
            [x.server_core for x in ours],
            [x.server_core for x in base],
            "trivial",
        ),
        Row(
            scenario,
            "load generator CPU (share of a core)",
            [x.loadgen_core for x in ours],
            [x.loadgen_core for x in base],
            "trivial",
        ),
    ]
    exhausted = sum(x.exhausted for x in ours)
    if exhausted:
        rows[0].note = f"{exhausted} client(s) ran out of records: raise submit_cap"
    return rows


NOTES = [
    "Closed loop: each client sends its next request when the answer to the last has arrived; "
    "errors = answers with another status than expected plus broken connections. "
    "Server CPU: psutil on the server process over the load generator's window.",
]


async def run_submit(ctx: Context) -> Section:
    rows = await run_kind(ctx, "submit")
    return Section("submit", "(a) Submit vs a trivial FastAPI endpoint", rows, list(NOTES))


async def run_status(ctx: Context) -> Section:
    rows = await run_kind(ctx, "status")
    return Section(
        "status", "(b) Status of a pending task vs a trivial FastAPI endpoint", rows, list(NOTES)
    )
