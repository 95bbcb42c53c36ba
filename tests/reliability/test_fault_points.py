"""A fault at every I/O step of an attempt, in turn: each database statement, each Redis
command and the AI call, once as a transient error and once as an outage of that layer shorter
than the lease. Whatever it hits, the analysis must end `success` with the AI called once, no
crash and no retry budget counted for a fault that was not the AI's, exactly one result row,
and a last published status document equal to the row. The table is printed (run with -s)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis.progress import stream_key, task_topic
from app.db import create_engine
from app.settings import Settings
from tests.analysis.conftest import new_task, stop_worker, task_status, wait_for, wait_for_status
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI, Mode, ok, status
from tests.faults import IN_ATTEMPT, Fault, FaultPlan
from worker.main import healing_worker

LEASE = 2.0  # renewed every 0.5 s
# With that lease, the worker's renewals (every 0.5 s, whenever the call starts) come at least
# twice during the call, the first within 0.5 s of its start: well clear of its end.
AI_LATENCY = 1.25
# Calls made by the worker's lease loop on its timer: how many of each every run surely makes
# (the first renewal, and the in-progress extensions beside it and after it).
TIMED = {"sql:renew": 1, "redis:PEXPIRE": 2}
OUTAGE = 1.5  # shorter than the lease, longer than a renewal period plus half a lease
# The statements that write an outcome: a lost answer to each is tried too.
OUTCOME_WRITES = frozenset({"sql:claim", "sql:success", "sql:retry", "sql:failure"})
# Compared between the last published document and the status endpoint's (the row's).
COMPARED = (
    "status", "progress", "current_step", "retry_count", "error_code", "completed_at",
    "updated_at", "worker_name",
)  # fmt: skip


@dataclass
class Outcome:
    fault: Fault | None
    fired: bool
    status: str
    ai_calls: int
    crash_count: int
    retry_counts: dict[str, int]
    results: int
    published_equals_row: bool
    effects_lost: int  # after-commit effects that failed for good (the metric)

    def problems(self, expected: Outcome) -> list[str]:
        """What differs from `expected` (the same scenario without a fault) beyond what the
        fault itself may change: an AI fault may spend network retries, nothing else may."""
        found = []
        if self.fault is not None and not self.fired:
            found.append("fault not reached")
        if self.status != expected.status:
            found.append(f"ended {self.status}")
        if self.ai_calls != expected.ai_calls:
            found.append(f"AI answered {self.ai_calls} times")
        if self.crash_count:
            found.append(f"{self.crash_count} crash(es) counted")
        spent = Counter(self.retry_counts)
        spent.subtract(expected.retry_counts)
        extra = {kind for kind, n in spent.items() if n}
        ai_fault = self.fault is not None and self.fault.kind == "ai"
        if extra - ({"network"} if ai_fault else set()):
            found.append(f"budget spent: {self.retry_counts}")
        if self.results != expected.results:
            found.append(f"{self.results} result rows")
        if not self.published_equals_row:
            found.append("last published document differs from the row")
        if self.effects_lost:
            found.append(f"{self.effects_lost} after-commit effect(s) lost")
        return found


async def _mark_attempt(ctx: dict[str, Any]) -> None:
    """arq's on_job_start: calls made by an analysis job (and the tasks it starts) are the
    attempt's; the cron jobs' are not."""
    if not str(ctx["job_id"]).startswith("cron:"):
        IN_ATTEMPT.set(True)


async def _last_published(redis: Redis, task_id: str) -> dict[str, Any] | None:
    entries = await redis.xrevrange(stream_key(task_topic(task_id)), "+", "-", count=1)
    if not entries:
        return None
    document: dict[str, Any] = json.loads(entries[0][1][b"doc"])
    return document


async def _analyse(
    plan: FaultPlan,
    settings: Settings,
    client: httpx.AsyncClient,
    user: ApiUser,
    engine: AsyncEngine,
    redis: Redis,
    fake_ai: FakeAI,
    answers: tuple[Mode, ...],
) -> Outcome:
    """One analysis on a worker of its own whose engine, Redis client and AI connector go
    through `plan`; the AI service gives `answers` first, then results."""
    fake_ai.reset(default=ok(latency=AI_LATENCY))
    fake_ai.then(*answers)
    effects_lost_before = _effects_lost()
    task_id = await new_task(client, user)
    ctx = {
        "settings": settings,
        "engine": plan.attach(create_engine(settings)),
        "pg_connection_class": plan.pg_connection_class(),
        "redis_connection_class": plan.redis_connection_class(),
        "ai_connector": plan.ai_connector,
    }
    worker = healing_worker(settings, on_job_start=_mark_attempt, handle_signals=False, ctx=ctx)
    running = asyncio.create_task(worker.async_run())
    try:
        final = await wait_for_status(client, user, task_id, within=40)

        async def published_equals_row() -> bool:
            row = await task_status(client, user, task_id)
            document = await _last_published(redis, task_id)
            return document is not None and all(document[k] == row[k] for k in COMPARED)

        try:
            published = await wait_for(published_equals_row, within=15)
        except AssertionError:
            published = False
    finally:
        await stop_worker(worker, running)
    async with engine.connect() as connection:
        task = (
            await connection.execute(
                text("SELECT crash_count, retry_counts FROM ai_analysis_tasks WHERE task_id = :t"),
                {"t": task_id},
            )
        ).one()
        results = await connection.scalar(
            text("SELECT count(*) FROM ai_analysis_results WHERE task_id = :t"), {"t": task_id}
        )
    return Outcome(
        fault=plan.fault,
        fired=plan.fired,
        status=final["status"],
        ai_calls=fake_ai.call_count(),
        crash_count=task.crash_count,
        retry_counts=dict(task.retry_counts),
        results=int(results or 0),
        published_equals_row=published,
        effects_lost=_effects_lost() - effects_lost_before,
    )


def _effects_lost() -> int:
    """`vocalborn_after_commit_failures_total`, all effects, in this process."""
    return int(
        sum(
            sample.value
            for metric in REGISTRY.collect()
            if metric.name == "vocalborn_after_commit_failures"
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
    )


def _table(outcomes: list[Outcome]) -> str:
    """The fault-point table: the first row is the baseline, without a fault."""
    lines = [
        f"{'fault point':<44} {'status':<8} {'AI':>2} {'crash':>5} {'budget':<16} "
        f"{'results':>7} {'published':<9} {'lost':>4} verdict"
    ]
    for o in outcomes:
        budget = ",".join(f"{k}={v}" for k, v in o.retry_counts.items()) or "-"
        verdict = "; ".join(o.problems(outcomes[0])) or "ok"
        lines.append(
            f"{o.fault or 'none (baseline)'!s:<44} {o.status:<8} {o.ai_calls:>2} "
            f"{o.crash_count:>5} {budget:<16} {o.results:>7} "
            f"{'= row' if o.published_equals_row else 'DIFFERS':<9} {o.effects_lost:>4} {verdict}"
        )
    return "\n".join(lines)


# What the AI service answers first, for each path an attempt can take to its outcome.
SCENARIOS = {
    "success": (),
    "retry": (status(502),),  # a network error, retried, then a result
    "failure": (status(422),),  # invalid input: failed without retry
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("mode", ["transient", "outage", "reply lost"])
async def test_a_fault_at_any_io_step_loses_nothing(
    mode: str,
    scenario: str,
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    redis: Redis,
    fake_ai: FakeAI,
    worker_settings: Settings,
) -> None:
    settings = worker_settings.model_copy(
        update={"reconcile_interval_seconds": 30, "lease_seconds": LEASE}
    )
    run = (client, alice, engine, redis, fake_ai, SCENARIOS[scenario])
    await _analyse(FaultPlan(), settings, *run)  # warm-up: scripts loaded on the server
    plan = FaultPlan()  # the baseline, which lists the attempt's calls
    outcomes = [await _analyse(plan, settings, *run)]
    assert {"sql:claim", "ai"} <= set(plan.calls), plan.calls
    for kind, nth in plan.points(at_most=TIMED):
        if mode == "reply lost" and kind not in OUTCOME_WRITES:
            continue
        fault = Fault(
            kind, nth, down_for=OUTAGE if mode == "outage" else 0.0, reply_lost=mode == "reply lost"
        )
        outcomes.append(await _analyse(FaultPlan(fault), settings, *run))
    table = _table(outcomes)
    print(f"\nfault points, {scenario} path ({mode}):\n{table}")
    assert all(not o.problems(outcomes[0]) for o in outcomes), table
