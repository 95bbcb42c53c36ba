"""(d) IO-bound: N tasks, the AI taking L seconds each, one worker process with max_jobs M.

The ideal is ceil(N / M) × L (20 s for 1,000 tasks, 10 s, 500 jobs). Ours is measured against
it, and its throughput against the seed's Celery design, which runs 4 analyses at a time: it
gets fewer tasks (a whole number of waves of 4), and both throughputs are tasks/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.context import Context
from bench.report import Goal, Row, Section
from bench.scenarios.batches import Batch, run_celery, run_ours, seed, stale_note, warm_up

NAME = "iobound"
TITLE = "(d) IO-bound: the AI taking 10 s, one worker, max_jobs 500 (quick: 2 s, 50)"
CELERY_CONCURRENCY = 4


@dataclass(frozen=True)
class Sizes:
    tasks: int
    max_jobs: int
    latency: float
    celery_tasks: int
    rounds: int


FULL = Sizes(tasks=1000, max_jobs=500, latency=10.0, celery_tasks=12, rounds=2)
QUICK = Sizes(tasks=100, max_jobs=50, latency=2.0, celery_tasks=8, rounds=1)


async def run(ctx: Context) -> Section:
    sizes = QUICK if ctx.quick else FULL
    rounds = ctx.rounds(sizes.rounds)
    ideal = math.ceil(sizes.tasks / sizes.max_jobs) * sizes.latency
    celery_ideal = math.ceil(sizes.celery_tasks / CELERY_CONCURRENCY) * sizes.latency
    worker = await ctx.stack.start_worker("iobound-worker", WORKER_MAX_JOBS=str(sizes.max_jobs))
    await ctx.celery()
    ctx.log(f"{NAME}: warming up")
    await warm_up(ctx, worker, None, celery=True)
    ours: list[Batch] = []
    celery: list[Batch] = []
    try:
        for round_ in range(1, rounds + 1):
            for side in ("ours", "celery") if round_ % 2 else ("celery", "ours"):
                ctx.log(f"{NAME}: {side}, round {round_}/{rounds}")
                if side == "ours":
                    tasks = await seed(ctx, sizes.tasks)
                    profile = f"{NAME}-worker" if ctx.profile and round_ == rounds else None
                    ours.append(
                        await run_ours(
                            ctx,
                            worker,
                            tasks,
                            latency=sizes.latency,
                            within=60 + 20 * ideal,
                            profile=profile,
                        )
                    )
                else:
                    tasks = await seed(ctx, sizes.celery_tasks, celery=True)
                    celery.append(
                        await run_celery(
                            ctx, tasks, latency=sizes.latency, within=60 + 10 * celery_ideal
                        )
                    )
    finally:
        ctx.processes.stop(worker)

    scenario = f"{sizes.tasks:,} tasks, {sizes.latency:g} s, max_jobs {sizes.max_jobs}"
    rows = [
        Row(
            scenario,
            "wall time vs the ideal",
            [b.seconds for b in ours],
            [ideal] * len(ours),
            "ideal",
            "s",
            Goal("ratio", "<=", 1.25),
        ),
        Row(
            scenario,
            f"throughput vs the seed's Celery ({sizes.celery_tasks} tasks)",
            [b.per_second for b in ours],
            [b.per_second for b in celery],
            "Celery",
            "tasks/s",
            Goal("ratio", ">=", 50.0),
        ),
        Row(
            scenario,
            "AI calls in flight at most",
            [float(b.max_in_flight) for b in ours],
            [float(sizes.max_jobs)] * len(ours),
            "max_jobs",
            "",
        ),
        Row(
            scenario,
            "worker CPU per task",
            [b.cpu_ms_per_task for b in ours],
            [b.cpu_ms_per_task for b in celery],
            "Celery",
            "ms",
            Goal("value", "<=", 10.0),
        ),
        Row(
            scenario,
            "Redis commands per task",
            [b.redis_per_task for b in ours],
            [b.redis_per_task for b in celery],
            "Celery",
        ),
        Row(
            scenario,
            "PostgreSQL write transactions per task",
            [b.pg_per_task for b in ours],
            [b.pg_per_task for b in celery],
            "Celery",
        ),
        Row(
            scenario,
            "worker peak RSS",
            [b.peak_rss_mb for b in ours],
            [b.peak_rss_mb for b in celery],
            "Celery, 5 processes",
            "MB",
            Goal("value", "<=", 250.0),
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
    ]
    notes = [
        f"Ideal: ceil({sizes.tasks} / {sizes.max_jobs}) × {sizes.latency:g} s = {ideal:g} s. "
        f"Celery (concurrency {CELERY_CONCURRENCY}) gets {sizes.celery_tasks} tasks (ideal "
        f"{celery_ideal:g} s); the throughput ratio compares tasks/s.",
        *stale_note(celery),
    ]
    return Section(NAME, TITLE, rows, notes)
