"""Prometheus metrics (namespace `vocalborn`): the API serves them on API_METRICS_PORT (and at
/metrics on its public port in development and test only), each worker on WORKER_METRICS_PORT.
Defined once here; each process exports the ones it moves. monitoring/alerts.yml and the
Grafana dashboard use only these names (tests/ops/test_monitoring.py checks it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import asyncpg
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)

STREAM_CONNECTIONS = Gauge(
    "vocalborn_stream_connections",
    "Open progress streams (SSE and WebSocket) in this process",
    ["transport"],
)
TASKS_SUBMITTED = Counter("vocalborn_tasks_submitted", "Analysis tasks created")
TASKS_FINISHED = Counter(
    "vocalborn_tasks_finished", "Analysis tasks that reached a final status", ["status"]
)
RESULT_CACHE = Counter(
    "vocalborn_result_cache_lookups",
    "Tasks created by submits, by result cache outcome: hit (finished at once with a copy of an"
    " earlier result, no AI call), miss (queued for analysis), fresh (the request asked for a"
    " new analysis). Hits are not counted in vocalborn_tasks_finished",
    ["outcome"],
)
TASK_ERRORS = Counter("vocalborn_task_errors", "Failed attempts by error class", ["error_class"])
TASK_RETRIES = Counter(
    "vocalborn_task_retries", "Retries and deferrals scheduled, by reason", ["reason"]
)
TASK_WAIT = Histogram(
    "vocalborn_task_wait_seconds", "From enqueue to claim", buckets=DURATION_BUCKETS
)
TASK_PROCESSING = Histogram(
    "vocalborn_task_processing_seconds", "From claim to stored result", buckets=DURATION_BUCKETS
)
TASKS_IN_FLIGHT = Gauge("vocalborn_tasks_in_flight", "Attempts running in this worker")
QUEUE_DEPTH = Gauge("vocalborn_queue_depth", "Jobs in the arq queue (waiting or running)")
QUEUED_BY_LANE = Gauge(
    "vocalborn_tasks_queued",
    "Tasks waiting to start (pending or retry), by priority lane",
    ["lane"],
)
AI_REQUESTS = Histogram(
    "vocalborn_ai_request_seconds",
    "Calls to the AI service by outcome",
    ["outcome"],
    buckets=DURATION_BUCKETS,
)
CIRCUIT_OPEN = Gauge(
    "vocalborn_ai_circuit_open", "1 while the first AI provider's circuit breaker is open"
)
PROVIDER_CIRCUIT_OPEN = Gauge(
    "vocalborn_ai_provider_circuit_open",
    "1 while an AI provider's circuit breaker is open, as this worker last read it",
    ["provider"],
)
AI_SLOTS_IN_USE = Gauge(
    "vocalborn_ai_slots_in_use",
    "AI concurrency slots held at a provider by every worker, as this worker last counted"
    " them (capped providers only)",
    ["provider"],
)
AI_SLOTS_HELD = Gauge(
    "vocalborn_ai_slots_held", "AI concurrency slots this worker holds, by provider", ["provider"]
)
AI_SLOT_WAIT = Histogram(
    "vocalborn_ai_slot_wait_seconds",
    "How long an attempt waited for an AI concurrency slot (0 when one was free)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
AI_FAILOVERS = Counter(
    "vocalborn_ai_failovers",
    "AI calls moved on to the next provider, by the provider left and why"
    " (circuit_open, network, ai_service, busy)",
    ["provider", "reason"],
)
AI_SLOTS_LOST = Counter(
    "vocalborn_ai_slots_lost",
    "AI slots found expired at their renewal (their lease ran out: Redis was unreachable for"
    " a lease); the call goes on, the cap may be exceeded meanwhile",
    ["provider"],
)
WORKER_HEARTBEAT = Gauge(
    "vocalborn_worker_heartbeat_timestamp_seconds", "Last heartbeat of this worker", ["worker"]
)
LIVE_WORKERS = Gauge(
    "vocalborn_live_workers",
    "Workers with a live heartbeat in Redis, as this worker counted them at its last beat",
)
DB_WRITE_RETRIES = Counter(
    "vocalborn_db_write_retries",
    "Retries of a task's outcome write after a transient database error, by write",
    ["write"],
)
AFTER_COMMIT_FAILURES = Counter(
    "vocalborn_after_commit_failures",
    "Effects after an outcome was committed (breaker, publish, re-enqueue) that failed for good;"
    " the committed outcome stands",
    ["effect"],
)
RECONCILE_REPAIRS = Counter(
    "vocalborn_reconcile_repairs",
    "What the reconciler repaired: jobs enqueued again for due tasks arq did not hold"
    " (enqueued), cancels nobody had finished (cancel_finished)",
    ["kind"],
)
DEPENDENCY_RETRIES = Counter(
    "vocalborn_worker_dependency_retries",
    "Tries of a worker's own loop (its queue poll, its start, a reconciler tick) that failed"
    " because Redis or PostgreSQL did not answer; the worker retries with backoff, it never"
    " exits for it",
    ["dependency"],
)
BREAKER_UNREADABLE = Counter(
    "vocalborn_breaker_unreadable",
    "AI calls let through because the circuit breaker's state could not be read",
)
SUBMIT_LIMIT_UNCHECKED = Counter(
    "vocalborn_submit_limit_unchecked",
    "Submits let through without the per-user rate limit because Redis did not answer in time",
)


OLDEST_WAITING = "vocalborn_oldest_waiting_task_age_seconds"
OLDEST_WAITING_SQL = """
    SELECT coalesce(extract(epoch FROM now() - min(coalesce(next_attempt_at, created_at))), 0)
    FROM ai_analysis_tasks
    WHERE status IN ('pending', 'retry') AND coalesce(next_attempt_at, created_at) <= now()
"""


class OldestWaitingTask(Collector):
    """How long the longest-waiting due task (pending, or a retry past its time) has waited,
    read from PostgreSQL at each scrape through an API process's asyncpg pool, on that
    process's event loop: the scrape's thread (API_METRICS_PORT) waits at most `timeout`.
    Registered once; an API lifespan attaches its loop and pool while it runs (the first one
    attached answers). Nothing is exported when no source is attached, when the query fails
    or times out, or when asked from the event loop itself (the /metrics mount of
    development and test), which must not block on its own work."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._sources: list[tuple[asyncio.AbstractEventLoop, asyncpg.Pool]] = []

    def attach(self, loop: asyncio.AbstractEventLoop, pg: asyncpg.Pool) -> None:
        self._sources.append((loop, pg))

    def detach(self, pg: asyncpg.Pool) -> None:
        self._sources = [source for source in self._sources if source[1] is not pg]

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        if not self._sources:
            return
        loop, pg = self._sources[0]
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop or loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(pg.fetchval(OLDEST_WAITING_SQL), loop)
        try:
            age = future.result(self.timeout)
        except Exception:
            future.cancel()
            log.warning("oldest waiting task: no value for this scrape", exc_info=True)
            return
        family = self._family()
        family.add_metric([], float(age))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            OLDEST_WAITING, "Seconds the longest-waiting due task (pending or retry) has waited"
        )


OLDEST_WAITING_TASK = OldestWaitingTask()
REGISTRY.register(OLDEST_WAITING_TASK)
