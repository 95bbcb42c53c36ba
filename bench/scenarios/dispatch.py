"""(c) Dispatch: N tasks, the AI answering at once, one worker process with max_jobs 100.

Ours: `python -m worker` (WORKER_MAX_JOBS=100, the default poll delay), the
tasks seeded as pending rows, their jobs enqueued through `enqueue_analysis` and released
together. Baselines, in the same rounds: bare arq no-op jobs with the same max_jobs and
poll_delay (`arq bench.bare_arq.WorkerSettings`), and the seed's Celery design
(bench/celery_baseline/) on the same rows, seeded in its own database (our idle worker's
reconciler would adopt them in ours), and the same fake AI. Each worker is started once and idle
between its batches; the three alternate within each round.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.context import Context
from bench.report import Goal, Row, Section
from bench.scenarios.batches import (
    Batch,
    run_bare,
    run_celery,
    run_ours,
    seed,
    stale_note,
    warm_up,
)

NAME = "dispatch"
TITLE = "(c) Dispatch: the AI answering at once, one worker, max_jobs 100"
MAX_JOBS = 100


@dataclass(frozen=True)
class Sizes:
    tasks: int
    rounds: int


FULL = Sizes(tasks=2000, rounds=3)
QUICK = Sizes(tasks=200, rounds=1)


def poll_delay() -> float:
    from app.settings import Settings

    return float(Settings.model_fields["worker_poll_delay_seconds"].default)


async def run(ctx: Context) -> Section:
    sizes = QUICK if ctx.quick else FULL
    rounds = ctx.rounds(sizes.rounds)
    n = sizes.tasks
    timeout = 60.0 + n / 5  # 5 tasks/s: far below anything measured so far
    delay = str(poll_delay())
    ours_worker = await ctx.stack.start_worker("dispatch-worker", WORKER_MAX_JOBS=str(MAX_JOBS))
    bare_env = ctx.stack.service_env(WORKER_MAX_JOBS=str(MAX_JOBS), WORKER_POLL_DELAY_SECONDS=delay)
    bare_worker = await ctx.stack.start_arq_worker(
        "bare-arq", "bench.bare_arq.WorkerSettings", bare_env, "arq:queue:health-check"
    )
    await ctx.celery()
    ctx.log(f"{NAME}: warming up")
    await warm_up(ctx, ours_worker, bare_worker, celery=True)
    ours: list[Batch] = []
    bare: list[Batch] = []
    celery: list[Batch] = []
    try:
        for round_ in range(1, rounds + 1):
            order = ["bare", "ours", "celery"] if round_ % 2 else ["celery", "ours", "bare"]
            for side in order:
                ctx.log(f"{NAME}: {side}, {n} tasks, round {round_}/{rounds}")
                if side == "bare":
                    await ctx.stack.clean()
                    bare.append(await run_bare(ctx, bare_worker, n, within=timeout))
                elif side == "ours":
                    tasks = await seed(ctx, n)
                    profile = f"{NAME}-worker" if ctx.profile and round_ == rounds else None
                    ours.append(
                        await run_ours(
                            ctx, ours_worker, tasks, latency=0.0, within=timeout, profile=profile
                        )
                    )
                else:
                    tasks = await seed(ctx, n, celery=True)
                    celery.append(await run_celery(ctx, tasks, latency=0.0, within=timeout))
    finally:
        ctx.processes.stop(ours_worker)
        ctx.processes.stop(bare_worker)

    scenario = f"{n:,} tasks"
    rows = [
        Row(
            scenario,
            "throughput vs bare arq",
            [b.per_second for b in ours],
            [b.per_second for b in bare],
            "bare arq",
            "tasks/s",
            Goal("ratio", ">=", 0.25),
        ),
        Row(
            scenario,
            "throughput vs the seed's Celery",
            [b.per_second for b in ours],
            [b.per_second for b in celery],
            "Celery",
            "tasks/s",
            Goal("ratio", ">=", 2.0),
        ),
        Row(
            scenario,
            "worker CPU per task vs bare arq",
            [b.cpu_ms_per_task for b in ours],
            [b.cpu_ms_per_task for b in bare],
            "bare arq",
            "ms",
            Goal("value", "<=", 3.0),
        ),
        Row(
            scenario,
            "worker CPU per task vs Celery (all 5 processes)",
            [b.cpu_ms_per_task for b in ours],
            [b.cpu_ms_per_task for b in celery],
            "Celery",
            "ms",
        ),
        Row(
            scenario,
            "Redis commands per task vs bare arq",
            [b.redis_per_task for b in ours],
            [b.redis_per_task for b in bare],
            "bare arq",
        ),
        Row(
            scenario,
            "Redis commands per task vs Celery (broker + backend)",
            [b.redis_per_task for b in ours],
            [b.redis_per_task for b in celery],
            "Celery",
        ),
        Row(
            scenario,
            "PostgreSQL write transactions per task vs Celery",
            [b.pg_per_task for b in ours],
            [b.pg_per_task for b in celery],
            "Celery",
        ),
        Row(
            scenario,
            "tasks not ending in success",
            [float(b.not_succeeded) for b in ours],
            [float(b.not_succeeded) for b in celery],
            "Celery",
            "",
            Goal("value", "<=", 0, "0"),
        ),
        Row(
            scenario,
            "worker peak RSS",
            [b.peak_rss_mb for b in ours],
            [b.peak_rss_mb for b in celery],
            "Celery, 5 processes",
            "MB",
        ),
    ]
    notes = [
        f"Each side: {n:,} tasks due at one instant on a worker already polling; time until "
        "an observer sees the last one done. Ours and bare arq: max_jobs "
        f"{MAX_JOBS}, poll_delay {delay} s (the service's default); Celery: prefork, "
        "concurrency 4, prefetch 1. Recordings: 64 kB WAV streamed by each task. Redis commands "
        "and PostgreSQL write transactions (transaction ids assigned; reads and pings are "
        "none): the servers' own counts over the batch, all clients (the idle workers' "
        "polling included, the observer's own polls left out).",
    ]
    notes += stale_note(celery)
    timeouts = sum(b.timed_out for b in [*ours, *bare, *celery])
    if timeouts:
        notes.append(f"{timeouts} batch(es) did not finish within {timeout:.0f} s (shown n/a).")
    return Section(NAME, TITLE, rows, notes)
